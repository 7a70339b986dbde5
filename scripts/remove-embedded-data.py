"""Remove the embedded PostgreSQL data folder recorded in a sweep.json (make clean-example)."""

import json
import shutil
import sys
from pathlib import Path

state = json.loads(Path(sys.argv[1]).read_text())
data_dir = (state.get("embedded") or {}).get("data_dir")
if data_dir:
    shutil.rmtree(data_dir, ignore_errors=True)
    Path(f"{data_dir}.lock").unlink(missing_ok=True)
    print(f"Removed {data_dir}")
