"""`python -m rattn_eval.train run --config`: a config with a key TrainConfig lacks is one sentence."""

import json

from rattn_eval.train.__main__ import main


def test_an_unknown_config_key_is_one_sentence_naming_it(tmp_path, capsys):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"name": "x", "model": "debug", "data_dir": "d", "out_dir": "o", "fast_attention": True}))
    assert main(["run", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "'fast_attention'" in err and '"backend"' in err and "\n" not in err
    cfg.write_text(json.dumps({"name": "x", "model": "debug", "data_dir": "d", "out_dir": "o", "step": 3}))
    assert main(["run", "--config", str(cfg)]) == 2
    assert "Did you mean 'steps'?" in capsys.readouterr().err
