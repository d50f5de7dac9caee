"""Pages included from files outside docs/, at build time: infra/README.md (images and
cluster manifests) and data/README.md (what lives where under data/). Their text stays
where it is maintained; the site shows it as written, with a note under the title.
Run by mkdocs-gen-files (mkdocs.yml)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = {
    "guides/infra.md": ROOT / "infra" / "README.md",
    "guides/data-layout.md": ROOT / "data" / "README.md",
}


def page(source: Path) -> str:
    text = source.read_text(encoding="utf-8")
    note = (
        f"!!! note\n    This page is `{source.relative_to(ROOT)}` of the repository, "
        "included when the site is built.\n\n"
    )
    if text.startswith("# "):
        title, _, body = text.partition("\n")
        return f"{title}\n\n{note}{body.lstrip()}"
    return note + text


if __name__ == "<run_path>":  # run by mkdocs-gen-files (runpy.run_path)
    import mkdocs_gen_files

    for name, source in PAGES.items():
        with mkdocs_gen_files.open(name, "w") as f:
            f.write(page(source))
        mkdocs_gen_files.set_edit_path(name, str(source.relative_to(ROOT)))
