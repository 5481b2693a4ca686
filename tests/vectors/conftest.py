import json
from pathlib import Path

VECTORS = Path(__file__).parent


def wycheproof(name: str) -> dict:
    return json.loads((VECTORS / "wycheproof" / name).read_text())
