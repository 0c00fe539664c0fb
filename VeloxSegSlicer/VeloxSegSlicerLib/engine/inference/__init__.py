"""One study through the model: manifest and runtime, model grid and normalisation, sliding window, organ
map, second look, label maps, CT coverage, lesion statistics; `pipeline.segment_study` ties them together.

Imports `..inputs` and `..errors`, never `..cohort`.
"""
