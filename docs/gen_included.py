"""Pages included from files outside docs/, at build time: infra/README.md (images and
cluster manifests) and data/README.md (what lives where under data/). Their text stays
where it is maintained; the site shows it as written. Run by mkdocs-gen-files."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = {
    "guides/infra.md": ROOT / "infra" / "README.md",
    "guides/data-layout.md": ROOT / "data" / "README.md",
}

try:
    import mkdocs_gen_files
except ImportError:  # imported without the docs extra
    mkdocs_gen_files = None

if mkdocs_gen_files is not None and __name__ != "__main__":
    for page, source in PAGES.items():
        note = (
            f"!!! note\n    This page is `{source.relative_to(ROOT)}` of the repository, "
            "included when the site is built.\n\n"
        )
        with mkdocs_gen_files.open(page, "w") as f:
            f.write(note + source.read_text(encoding="utf-8"))
        mkdocs_gen_files.set_edit_path(page, str(source.relative_to(ROOT)))
