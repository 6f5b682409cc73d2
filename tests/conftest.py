import sys
from pathlib import Path

# Let tests import `tests.helpers` whatever the rootdir.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
