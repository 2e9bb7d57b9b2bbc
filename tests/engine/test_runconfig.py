"""config_differences: which saved-vs-current config keys block a --resume (fastssl.engine.runconfig)."""

from fastssl.engine.runconfig import MISSING_MEANS, config_differences


def test_a_run_saved_before_a_new_flag_resumes_with_the_flag_at_its_old_meaning():
    saved = {"method": "inpaint", "lr": 0.002, "workers": 4}  # no norm_pix / input_norm: saved before the flags
    now = {"method": "inpaint", "lr": 0.002, "workers": 1, "norm_pix": 0, "input_norm": "none"}
    assert config_differences(saved, now) == {}  # workers is a runtime key; the new flags at their old meaning
    assert config_differences(saved, {**now, "norm_pix": 8}) == {"norm_pix": (0, 8)}
    assert config_differences(saved, {**now, "input_norm": "image"}) == {"input_norm": ("none", "image")}
    # a key saved explicitly is compared as saved
    assert config_differences({**saved, "norm_pix": 8}, now) == {"norm_pix": (8, 0)}


def test_a_new_flag_whose_old_meaning_is_not_its_default_resumes_only_at_the_old_meaning():
    from fastssl.methods._tiles import tile_norm
    # tile_norm: a run saved without it standardized in the sampler ('tiles'); today's default is 'input'
    assert MISSING_MEANS["tile_norm"] == tile_norm({}) == "tiles"  # the same meaning the method reads
    assert config_differences({"method": "jigsaw"}, {"method": "jigsaw", "tile_norm": "input"}) == {
        "tile_norm": ("tiles", "input")}
    assert config_differences({"method": "jigsaw"}, {"method": "jigsaw", "tile_norm": "tiles"}) == {}
    assert config_differences({"method": "a", "lr": 1}, {"method": "a", "lr": 2}) == {"lr": (1, 2)}
