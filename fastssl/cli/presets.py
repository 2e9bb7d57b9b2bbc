"""Packaged training presets (``fastssl/configs/<group>/<name>.yaml``) and how ``--config`` finds them.

The presets ship inside the installed package, so a user without the source tree can name one:

    python -m fastssl.train --config imagenet/simclr --data /path/to/imagenet
    python -m fastssl.train --config configs/imagenet/simclr.yaml --data ...   # from a source checkout

``resolve_config(text)``: an existing file wins (a run's ``config.json``, your own YAML); otherwise the
text names a packaged preset, with or without a leading ``configs/`` and the ``.yaml`` suffix. In a source
checkout the repository's ``configs`` folder is a link to ``fastssl/configs``, so both spellings open the
same file. Each preset is the flag values of one paper's ImageNet setting, every number's source in a
comment on its line (docs/imagenet.md).
"""

from __future__ import annotations

from pathlib import Path

from fastssl.base.errors import ConfigError

PRESETS_DIR = Path(__file__).resolve().parents[1] / "configs"  # fastssl/configs


def list_presets() -> list[str]:
    """The packaged presets as ``group/name`` (e.g. ``imagenet/simclr``), sorted."""
    return sorted(str(p.relative_to(PRESETS_DIR).with_suffix("")) for p in PRESETS_DIR.glob("*/*.yaml"))


def preset_path(name: str) -> Path | None:
    """The packaged file a preset name means (``imagenet/simclr``, ``imagenet/simclr.yaml``,
    ``configs/imagenet/simclr.yaml``), or None when there is no such preset."""
    rel = str(name).replace("\\", "/").removeprefix("./").removeprefix("configs/")
    if not rel.endswith((".yaml", ".yml")):
        rel += ".yaml"
    path = (PRESETS_DIR / rel).resolve()
    if PRESETS_DIR not in path.parents or not path.is_file():
        return None
    return path


def resolve_config(text: str) -> Path:
    """The file ``--config TEXT`` opens: TEXT itself if it is a file, else the packaged preset it names.
    ConfigError (one line, listing the presets) when it is neither."""
    path = Path(text).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        raise ConfigError(f"--config {path} is a folder; give a JSON/YAML file (a run's config.json: "
                          f"{path / 'config.json'}) or a preset name ({', '.join(list_presets()[:2])}, ...)")
    packaged = preset_path(text)
    if packaged is not None:
        return packaged
    raise ConfigError(f"--config: file not found: {path} (nor a packaged preset; presets: "
                      f"{', '.join(list_presets()) or 'none'})")
