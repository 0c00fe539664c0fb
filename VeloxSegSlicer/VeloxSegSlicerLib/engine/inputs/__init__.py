"""Reading and checking the inputs: image files (NIfTI, NRRD, MetaImage, DICOM) and their completeness, the
DICOM header and SUV, the plausibility checks of a CT and a PET, which files of a study folder are which.

Imports only `..errors` among the engine's modules (not `inference` nor `cohort`).
"""
