"""DICOM terminology of the segments VeloxSeg creates.

Codes are the ones of Slicer's "Segmentation category and type - DICOM master list", so a DICOM SEG
export carries SegmentedPropertyCategory = SCT 49755003 and SegmentedPropertyType = SCT 108369006.
"""

CONTEXT_NAME = "Segmentation category and type - DICOM master list"
ANATOMIC_CONTEXT_NAME = "Anatomic codes - DICOM master list"

CATEGORY = ("SCT", "49755003", "Morphologically Altered Structure")
TYPE = ("SCT", "108369006", "Neoplasm")

# Display colour for the single "all lesions" segment; per-lesion segments cycle through LESION_COLORS.
ALL_LESIONS_COLOR = (0.95, 0.85, 0.1)
LESION_COLORS = (
    (0.0, 0.9, 0.3), (0.2, 0.6, 1.0), (1.0, 0.85, 0.0), (0.95, 0.3, 0.95),
    (0.0, 0.9, 0.9), (1.0, 0.55, 0.1), (0.6, 1.0, 0.4), (0.75, 0.55, 1.0),
)


def _code(scheme, value, meaning):
    return f"{scheme}^{value}^{meaning}"


def lesionTerminologyEntry():
    """Serialized terminology entry, in the ``~``-separated form vtkSegment stores as TerminologyEntry.

    Fields: context ~ category ~ type ~ type modifier ~ anatomic context ~ region ~ region modifier.
    """
    return "~".join((
        CONTEXT_NAME,
        _code(*CATEGORY),
        _code(*TYPE),
        "^^",
        ANATOMIC_CONTEXT_NAME,
        "^^",
        "^^",
    ))


def parseTerminologyEntry(entry):
    """Split a serialized entry into (category, type) as (scheme, value, meaning) tuples (for checks)."""
    fields = entry.split("~")
    if len(fields) != 7:
        raise ValueError(f"Not a serialized terminology entry: {entry!r}")
    return tuple(fields[1].split("^")), tuple(fields[2].split("^"))
