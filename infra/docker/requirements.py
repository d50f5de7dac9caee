"""Print the pinned requirements an image installs, one per line, read from setup.cfg:
``install_requires`` plus the named extras (default: mlops). Standard library only: it
runs on the host (to fill the wheelhouse) and inside the image build (to install it).

    python3 infra/docker/requirements.py setup.cfg [EXTRA ...]
"""

import configparser
import sys
from pathlib import Path


def requirements(setup_cfg: Path, extras: list[str]) -> list[str]:
    cfg = configparser.ConfigParser()
    cfg.read_string(setup_cfg.read_text())
    blocks = [cfg["options"]["install_requires"]]
    blocks += [cfg["options.extras_require"][name] for name in extras]
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


if __name__ == "__main__":
    args = sys.argv[1:] or ["setup.cfg"]
    sys.stdout.write("\n".join(requirements(Path(args[0]), args[1:] or ["mlops"])) + "\n")
