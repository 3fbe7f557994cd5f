"""Write every result's Markdown again from its JSON (after new results landed).

    python bench/render.py [--out DIR]

The CPU-versus-GPU sections read the other results in the folder, so a table
written before a GPU run existed says there is none; this brings every ``.md``
under ``DIR`` (default bench/results) up to date with the JSON beside it.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (bench/ is a folder of scripts, not a package)
import layers  # noqa: E402
import net  # noqa: E402
import scan  # noqa: E402

RENDERERS = {"layers": layers.markdown, "net": net.markdown, "scan": scan.markdown}


def render(out_dir, log=print):
    """Rewrite ``<stem>.md`` for every ``<stem>.json`` result under ``out_dir``; returns the paths written."""
    written = []
    for kind, markdown in RENDERERS.items():
        for path, result in common.load_results(out_dir, kind).items():
            result["out_dir"] = str(out_dir)  # the folder it sits in now, not where it was measured
            md = Path(path).with_suffix(".md")
            common.write_atomic(md, markdown(result))
            written.append(md)
            log(f"wrote {md}")
    return written


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(common.RESULTS), help="results folder (default bench/results)")
    render(Path(parser.parse_args(argv).out))


if __name__ == "__main__":
    main()
