"""Old import path of the fake CamVid helpers, kept for tests/test_fast_path.py (no tests here).

The helpers live in tests/camvid_fake.py and the report tests in tests/bench/; delete this file
once test_fast_path.py imports from camvid_fake.
"""

from camvid_fake import CLASSES, COLOURS, make_fake_camvid

__all__ = ["CLASSES", "COLOURS", "make_fake_camvid"]
