"""`loralint train` and :mod:`loralint.train`: tiny random Qwen3 / Llama models with the real SmolLM2 tokenizer,
trained for a few steps on CPU (see tests/tiny.py)."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from loralint import cli, train
from loralint.rules import get_rule
from loralint.windows import Window, window_messages

sys.path.insert(0, str(Path(__file__).parent))
from tiny import smollm2_tokenizer, tiny_model_dir  # noqa: E402

JS = """function grant(user, opts) {
  if (user && user.active && !user.banned) {
    return opts.level > 2 || opts.admin ? "full" : "basic";
  }
  while (queue.length > 0 && !stopped) {
    step(queue.shift());
  }
  if (ready) {
    start();
  }
  for (let i = 0; i < n; i++) {
    visit(i);
  }
  return null;
}
"""


def _rows(n: int, seed: int = 0) -> list[dict]:
    """Chat rows as the dataset builder writes them: windows of a small file, oracle answers."""
    from loralint.languages import parse

    rule = get_rule("predicate")
    src = JS.encode()
    findings = rule.check_tree(parse(src, "javascript"), src, "grant.js")
    lines = JS.splitlines()
    spans = [(0, 3), (3, 6), (6, 9), (1, 3), (9, 12), (4, 6), (12, 15), (2, 5)]  # short windows: fast steps
    rows = []
    for i in range(n):
        s, e = spans[(i + seed) % len(spans)]
        inside = [f for f in findings if s < f.line <= e]
        msgs = window_messages(rule, lines, Window(s, e), "js", rule.render_answer(inside))
        rows.append({"messages": msgs, "meta": {"rule": "predicate", "path": "grant.js", "window": [s, e]}})
    return rows


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    smollm2_tokenizer()  # skips the module's model tests when the embedded tokenizer is absent
    root = tmp_path_factory.mktemp("train")
    data = root / "data"
    data.mkdir()
    _write(data / "train.jsonl", _rows(24))
    with_val = root / "data-with-val"  # as `loralint dataset --val-packages N` writes it
    with_val.mkdir()
    _write(with_val / "train.jsonl", _rows(24))
    _write(with_val / "val.jsonl", _rows(4, seed=3))
    return root


@pytest.fixture(scope="module")
def qwen3(work):
    return tiny_model_dir(work, "qwen3")


def _settings(base: Path, **over) -> dict:
    s = {"base": str(base), "lora_r": 8, "lora_alpha": 16, "learning_rate": 5e-3, "batch_size": 2,
         "logging_steps": 1, "save_steps": 4, "save_total_limit": 2, "warmup_steps": 0, "cutoff_len": 512,
         "oversample": None, "mine_rounds": 0}
    return train.load_settings("smollm2-135m", s | over)


@pytest.fixture(scope="module")
def trained(work, qwen3):
    """One LoRA run on the tiny Qwen3: 8 steps, checkpoints every 4, eval loss on the folder's val.jsonl."""
    out = work / "adapter"
    meta = train.train(work / "data-with-val", out, _settings(qwen3, max_steps=8), progress=False)
    return out, meta


def _log(out: Path) -> list[dict]:
    return [json.loads(ln) for ln in (out / train.TRAIN_LOG).read_text().splitlines() if ln.strip()]


# ------------------------------------------------------------------------------------------- training runs
def test_a_few_steps_lower_the_loss(trained):
    out, meta = trained
    losses = [r["loss"] for r in _log(out) if "loss" in r]
    assert len(losses) == 8
    assert sum(losses[-2:]) / 2 < sum(losses[:2]) / 2 - 0.05, losses
    assert meta["train"]["steps"] == 8


def test_outputs_are_a_peft_adapter_with_card_metadata_log_and_plot(trained, work, qwen3):
    out, meta = trained
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "README.md", "loralint.json", "train_log.jsonl", "training_loss.png"):
        assert (out / name).is_file(), name
    assert (out / "training_loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(list(out.glob("checkpoint-*"))) <= 2

    stored = json.loads((out / "loralint.json").read_text())
    assert stored["base"]["spec"] == str(qwen3.resolve())
    assert stored["rule"]["id"] == "predicate" and stored["rule"]["summary"] == get_rule("predicate").summary
    assert stored["prompt"]["fingerprint"] == get_rule("predicate").fingerprint()
    sha = hashlib.sha256()
    data = work / "data-with-val" / "train.jsonl"
    sha.update(f"{data.stat().st_size}:".encode() + data.read_bytes())
    assert stored["dataset"]["sha256"] == sha.hexdigest()
    assert stored["hyperparameters"]["learning_rate"] == 5e-3 and stored["hyperparameters"]["lora_r"] == 8
    assert stored["train"]["loss"] == meta["train"]["loss"] and stored["eval"]["loss"] > 0
    assert stored["dataset"]["eval_files"] == [str(work / "data-with-val" / "val.jsonl")]

    card = (out / "README.md").read_text()
    for text in (str(qwen3.resolve()), "`predicate`", get_rule("predicate").summary, sha.hexdigest(),
                 "learning_rate", "final train loss", "eval", "training_loss.png"):
        assert text in card, text

    rows = _log(out)
    steps = [r for r in rows if "loss" in r]
    for key in ("step", "epoch", "loss", "lr", "grad_norm", "tokens_per_s"):
        assert all(key in r for r in steps), key
    assert all(r["tokens_per_s"] > 0 for r in steps)
    assert any("eval_loss" in r for r in rows)


def test_model_card_is_updated_by_later_stages(trained):
    from loralint.modelcard import read_metadata, write_model_card

    out, _ = trained
    write_model_card(out, {"eval": {"recall": 0.92, "precision": 0.86, "files": 300}})
    meta = read_metadata(out)
    assert meta["eval"]["recall"] == 0.92 and meta["eval"]["loss"] > 0  # merged, not replaced
    assert meta["rule"]["id"] == "predicate"
    card = (out / "README.md").read_text()
    assert "92.0 %" in card and "86.0 %" in card


def test_adapter_loads_back_and_changes_the_output(trained, qwen3):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out, _ = trained
    tok = smollm2_tokenizer()
    ids = tok.apply_chat_template(_rows(1)[0]["messages"][:1], add_generation_prompt=True, return_tensors="pt",
                                  return_dict=True)["input_ids"]
    base = AutoModelForCausalLM.from_pretrained(qwen3).eval()
    with torch.no_grad():
        before = base(ids).logits
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(qwen3), out).eval()
    with torch.no_grad():
        after = tuned(ids).logits
    assert (after - before).abs().max().item() > 1e-3


def test_loss_is_only_on_the_answer(work, qwen3):
    from transformers import AutoModelForCausalLM
    from trl import SFTTrainer

    tok = smollm2_tokenizer()
    s = train.resolve_settings(_settings(qwen3))
    rows = _rows(2)
    trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(qwen3),
                         args=train.sft_config(s, work / "mask", False), processing_class=tok,
                         train_dataset=train.to_prompt_completion(rows), peft_config=train.lora_config(s))
    for row, ex in zip(rows, trainer.train_dataset):
        trained_ids = [t for t in ex["labels"] if t != -100]
        assert ex["labels"][: len(ex["labels"]) - len(trained_ids)] == [-100] * (len(ex["labels"]) - len(trained_ids))
        answer = tok.decode(trained_ids)
        assert answer.startswith(row["messages"][-1]["content"]) and answer.rstrip().endswith(tok.eos_token)


class _Kill(Exception):
    pass


def _killer(at: int):
    from transformers import TrainerCallback

    class Kill(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == at:
                raise _Kill(f"killed at step {at}")

    return Kill()


def test_resume_continues_from_the_last_checkpoint(work, qwen3):
    out = work / "resume"
    s = _settings(qwen3, max_steps=4, save_steps=2)
    with pytest.raises(_Kill):
        train.train(work / "data", out, s, progress=False, callbacks=[_killer(3)])
    assert (out / "checkpoint-2").is_dir() and not (out / "checkpoint-3").exists()

    with pytest.raises(train.TrainError, match="--resume"):
        train.train(work / "data", out, s, progress=False)

    meta = train.train(work / "data", out, s, resume=True, progress=False)
    assert meta["train"]["resumed_from"] == "checkpoint-2"
    assert meta["train"]["steps"] == 4
    state = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    assert [r["step"] for r in _log(out) if "loss" in r] == [1, 2, 3, 4]  # the killed step 3 is not there twice


def test_full_fine_tuning_of_a_llama_saves_the_whole_model(work):
    import torch
    from transformers import AutoModelForCausalLM

    llama = tiny_model_dir(work, "llama")
    out = work / "full"
    tok = smollm2_tokenizer()
    lengths = sorted(len(tok.apply_chat_template(r["messages"], return_dict=False)) for r in _rows(24))
    cutoff = lengths[len(lengths) // 2]  # about half the examples are longer: dropped, never truncated
    meta = train.train(work / "data", out, _settings(llama, mode="full", max_steps=3, learning_rate=1e-3,
                                                     padding_free=True, cutoff_len=cutoff), progress=False)
    assert meta["kind"] == "full-model" and meta["hyperparameters"]["padding_free"] is True
    assert meta["dataset"]["dropped_over_cutoff"] == sum(n > cutoff for n in lengths) > 0
    assert meta["dataset"]["max_tokens"] <= cutoff
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    assert not (out / "adapter_config.json").exists()
    a, b = AutoModelForCausalLM.from_pretrained(llama), AutoModelForCausalLM.from_pretrained(out)
    diff = max((pa - pb).abs().max().item() for pa, pb in zip(a.parameters(), b.parameters()))
    assert diff > 0 and torch.isfinite(torch.tensor(diff))


# ----------------------------------------------------------------------------------------- settings, presets
def test_seed_presets_keep_the_tutorial_hyperparameters():
    for name, lr, base in (("qwen3-0.6b", 0.0002, "Qwen/Qwen3-0.6B"), ("qwen3-1.7b", 0.0001, "Qwen/Qwen3-1.7B")):
        s = train.load_settings(name)
        assert s["base"] == base and s["mode"] == "qlora" and s["learning_rate"] == lr
        assert (s["lora_r"], s["lora_alpha"], s["lora_target"]) == (16, 16, "all-linear")
        assert (s["lr_scheduler_type"], s["warmup_steps"], s["num_train_epochs"]) == ("cosine", 5, 1)
        assert (s["per_device_train_batch_size"], s["gradient_accumulation_steps"], s["cutoff_len"]) == (2, 4, 4096)
        assert (s["logging_steps"], s["save_steps"], s["save_total_limit"]) == (10, 200, 2)
    s = train.load_settings("smollm2-135m")
    assert s["base"] == "smollm2-135m" and s["mode"] == "lora" and 32 <= s["lora_r"] <= 64
    assert s["batch_size"] == 64 and s["num_train_epochs"] == 3 and s["cutoff_len"] == 2048
    assert 4e-4 <= s["learning_rate"] <= 1e-3 and s["warmup_steps"] == 0.03
    assert s["packing"] == "auto" and s["mine_rounds"] >= 1 and "for=" in s["oversample"]


def test_overrides_are_typed_and_checked():
    over = train.parse_overrides(["learning_rate=1e-4", "lora_r=64", "bf16=false", "lora_target=q_proj,v_proj",
                                  "lr_scheduler_type=linear"])
    assert over == {"learning_rate": 1e-4, "lora_r": 64, "bf16": False, "lora_target": "q_proj,v_proj",
                    "lr_scheduler_type": "linear"}
    s = train.load_settings("qwen3-0.6b", over)
    assert s["learning_rate"] == 1e-4 and train.lora_config(s).target_modules == {"q_proj", "v_proj"}
    with pytest.raises(train.TrainError, match="learning_rate"):
        train.load_settings(None, {"learning_rte": 1})
    with pytest.raises(train.TrainError, match="recipe"):
        train.load_settings(None, {"output_dir": "x"})
    with pytest.raises(train.TrainError, match="KEY=VALUE"):
        train.parse_overrides(["lr"])
    with pytest.raises(train.TrainError, match="preset"):
        train.load_settings("nope")


def test_cpu_settings_are_fp32_sdpa_length_grouped():
    s = train.resolve_settings(train.load_settings("smollm2-135m"), device="cpu", world=2)
    assert s["bf16"] is False and s["attn_implementation"] == "sdpa"
    assert s["padding_free"] is False and s["group_by_length"] is True
    assert s["per_device_train_batch_size"] == 32 and s["effective_batch_size"] == 64
    assert s["packing"] is False  # packing is for CUDA (a dense block mask on CPU: --packing still works)
    with pytest.raises(train.TrainError, match="multiple"):
        train.resolve_settings(train.load_settings("smollm2-135m", {"batch_size": 62}), device="cpu", world=4)
    with pytest.raises(train.TrainError, match="GPU"):
        train.resolve_settings(train.load_settings("smollm2-135m", {"bf16": True}), device="cpu")


# ------------------------------------------------------------------------------------------------ the CLI
def _cli(capsys, *args) -> tuple[int, str]:
    rc = cli.main(["train", *map(str, args)])
    return rc, capsys.readouterr().err


def test_bad_dataset_line_names_file_and_line(tmp_path, capsys):
    good = json.dumps(_rows(1)[0])
    bad = tmp_path / "bad.jsonl"
    bad.write_text(good + "\n" + '{"messages": [{"role": "user", "content": "x"}\n')
    rc, err = _cli(capsys, "--data", bad, "--out", tmp_path / "o", "--base", tmp_path)
    assert rc == 2 and f"{bad}:2: not valid JSON" in err and "Traceback" not in err
    bad.write_text(good + "\n\n" + json.dumps({"messages": [{"role": "user", "content": "x"}]}) + "\n")
    rc, err = _cli(capsys, "--data", bad, "--out", tmp_path / "o")
    assert rc == 2 and f"{bad}:3: the last message must be the assistant's answer" in err


def test_missing_base_is_one_line(work, tmp_path, capsys):
    rc, err = _cli(capsys, "--data", work / "data", "--out", tmp_path / "o", "--base", tmp_path / "no-such-model")
    assert rc == 2 and "no model at" in err and len(err.strip().splitlines()) == 1, err
    rc, err = _cli(capsys, "--data", work / "data", "--out", tmp_path / "o", "--base", "not-a-model")
    assert rc == 2 and "unknown base model" in err and "smollm2-135m" in err and len(err.strip().splitlines()) == 1


def test_missing_data_and_qlora_on_cpu_are_one_line(work, qwen3, tmp_path, capsys):
    import torch

    rc, err = _cli(capsys, "--data", tmp_path / "nothing", "--out", tmp_path / "o")
    assert rc == 2 and "no dataset at" in err
    if not torch.cuda.is_available():
        rc, err = _cli(capsys, "--data", work / "data", "--out", tmp_path / "o", "--base", qwen3, "--mode", "qlora")
        assert rc == 2 and "--mode lora" in err and len(err.strip().splitlines()) == 1


def test_dry_run_prints_the_settings(capsys):
    rc = cli.main(["train", "--data", "x", "--out", "y", "--dry-run", "--lr", "0.001", "--rank", "64",
                   "--set", "num_train_epochs=5"])
    s = json.loads(capsys.readouterr().out)
    assert rc == 0 and s["learning_rate"] == 0.001 and s["lora_r"] == s["lora_alpha"] == 64
    assert s["num_train_epochs"] == 5 and s["device"] in ("cpu", "cuda", "mps")


# ------------------------------------------------------------------------------------- two processes (DDP)
def test_two_processes_train_one_adapter(work, qwen3, tmp_path):
    """`accelerate launch --num_processes 2 -m loralint train ...` on CPU (gloo): both ranks step, rank 0 saves."""
    pytest.importorskip("accelerate")
    out = tmp_path / "ddp"
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(
        [str(Path(__file__).parents[1] / "src"), os.environ.get("PYTHONPATH", "")]))
    # accelerate's --cpu flag runs one process (several need mpirun); --multi_gpu launches through torchrun, and
    # without a GPU each rank runs on CPU with the gloo backend
    with socket.socket() as sock:  # a free port: other test runs may be launching processes too
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--main_process_port", str(port), "--mixed_precision", "no",
           "--dynamo_backend", "no", "-m", "loralint", "train",
           "--data", str(work / "data"), "--out", str(out), "--base", str(qwen3), "--max-steps", "3",
           "--batch-size", "4", "--set", "logging_steps=1", "--set", "lora_r=8", "--oversample", "none", "--mine", "0"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = json.loads((out / "loralint.json").read_text())
    assert meta["train"]["processes"] == 2 and meta["hyperparameters"]["per_device_train_batch_size"] == 2
    steps = [r for r in _log(out) if "loss" in r]
    # 24 examples, 2 a rank a step: 6 steps an epoch only if both ranks take their share of each batch
    assert [r["step"] for r in steps] == [1, 2, 3] and steps[0]["epoch"] == pytest.approx(1 / 6, abs=1e-3)
    assert proc.stderr.count("saved adapter to") == 1  # rank 0 alone saves and reports
    assert (out / "adapter_model.safetensors").is_file() and len(list(out.glob("checkpoint-*"))) == 1


def test_dataset_folders_pick_train_and_held_out_splits(tmp_path):
    for name in ("train.jsonl", "val.jsonl", "eval.jsonl", "extra.jsonl"):
        _write(tmp_path / name, _rows(1))
    assert train.data_files(tmp_path) == [tmp_path / "train.jsonl"]
    assert train.eval_files_of(tmp_path) == [tmp_path / "val.jsonl"]
    assert train.default_eval_data(tmp_path) == tmp_path / "val.jsonl"
    (tmp_path / "train.jsonl").unlink()
    assert train.data_files(tmp_path) == [tmp_path / "extra.jsonl"]  # never a held-out split
    one, two = [tmp_path / "extra.jsonl"], [tmp_path / "val.jsonl", tmp_path / "extra.jsonl"]
    assert train.dataset_sha256(one) != train.dataset_sha256(two)
    with pytest.raises(train.DatasetError, match="no dataset"):
        train.data_files(tmp_path / "missing")


def test_base_spec_in_metadata_finds_the_base_again(tmp_path):
    from loralint import models

    carried = models.Base(str(tmp_path / models.EMBEDDED_FILE), "gguf", str(tmp_path), models.EMBEDDED_FILE)
    assert train.base_spec(carried.name, carried) == models.EMBEDDED  # a GPU machine's copy of the embedded GGUF
    local = models.Base("rel/dir", "dir", str(tmp_path))
    assert train.base_spec("rel/dir", local) == str(Path("rel/dir").resolve())
    assert train.base_spec("Qwen/Qwen3-1.7B", models.resolve("Qwen/Qwen3-1.7B")) == "Qwen/Qwen3-1.7B"


def test_resume_falls_back_to_the_newest_complete_checkpoint(work, qwen3):
    """#11: a run killed while saving leaves a truncated safetensors or no trainer_state.json in its newest
    checkpoint; --resume took it and failed."""
    out = work / "resume-incomplete"
    s = _settings(qwen3, max_steps=5, save_steps=1, save_total_limit=3)
    with pytest.raises(_Kill):
        train.train(work / "data", out, s, progress=False, callbacks=[_killer(4)])  # (killed before saving 4)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2", "checkpoint-3"]
    w = out / "checkpoint-3" / "adapter_model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])  # killed while writing the weights
    (out / "checkpoint-2" / "trainer_state.json").unlink()  # killed before the state
    assert train.checkpoint_problem(out / "checkpoint-3").startswith("adapter_model.safetensors is truncated")
    assert train.checkpoint_problem(out / "checkpoint-2") == "no trainer_state.json"
    assert train.checkpoint_problem(out / "checkpoint-1") is None

    said: list[str] = []
    meta = train.train(work / "data", out, s, resume=True, progress=False, log=said.append)
    assert meta["train"]["resumed_from"] == "checkpoint-1" and meta["train"]["steps"] == 5
    told = "\n".join(said)
    assert "checkpoint-3 is incomplete (adapter_model.safetensors is truncated" in told
    assert "checkpoint-2 is incomplete (no trainer_state.json)" in told
    assert "resuming from checkpoint-1, the newest complete checkpoint" in told
    assert (out / "incomplete-checkpoint-3").is_dir() and (out / "checkpoint-5").is_dir()
    assert [r["step"] for r in _log(out) if "loss" in r] == [1, 2, 3, 4, 5]


def test_resume_with_no_complete_checkpoint_says_so(tmp_path):
    (tmp_path / "checkpoint-7").mkdir()
    with pytest.raises(train.TrainError, match="no complete checkpoint"):
        train.check_output_dir(tmp_path, resume=True, overwrite=False)


# --------------------------------------------------------------------------------------- experiment trackers
def test_report_to_tensorboard_writes_event_files(work, qwen3, tmp_path):
    pytest.importorskip("tensorboard")
    out = tmp_path / "tb"
    meta = train.train(work / "data", out, _settings(qwen3, max_steps=2, logging_steps=1, report_to="tensorboard"),
                       progress=False)
    assert meta["hyperparameters"]["report_to"] == ["tensorboard"]
    events = list(out.rglob("events.out.tfevents.*"))
    assert events and sum(e.stat().st_size for e in events) > 100, list(out.rglob("*"))


def test_adapter_weights_are_saved_in_bf16_on_gpu_runs(tmp_path):
    """A bf16 run's adapter is written in bf16 (half the size); the values are the fp32 ones, rounded."""
    import torch
    from safetensors.torch import load_file, save_file

    g = torch.Generator().manual_seed(0)
    w = {"base_model.model.layers.0.q_proj.lora_A.weight": torch.randn(8, 64, generator=g),
         "base_model.model.layers.0.q_proj.lora_B.weight": torch.randn(64, 8, generator=g)}
    save_file(w, str(tmp_path / "adapter_model.safetensors"))
    before = (tmp_path / "adapter_model.safetensors").stat().st_size
    train.adapter_in_bf16(tmp_path)
    got = load_file(str(tmp_path / "adapter_model.safetensors"))
    assert set(got) == set(w) and all(t.dtype == torch.bfloat16 for t in got.values())
    assert all(torch.allclose(got[k].float(), w[k], rtol=1e-2) for k in w)
    assert (tmp_path / "adapter_model.safetensors").stat().st_size < 0.6 * before
    train.adapter_in_bf16(tmp_path)  # a second pass leaves it as it is
    assert all(t.dtype == torch.bfloat16 for t in load_file(str(tmp_path / "adapter_model.safetensors")).values())


def test_init_adapter_continues_a_trained_adapter(trained, work, qwen3, tmp_path):
    """--set init_adapter=FOLDER starts from that adapter (its rank, not the recipe's), so the first steps' loss
    is where the earlier run ended, far below a fresh start's."""
    adapter, _ = trained
    out = tmp_path / "more"
    meta = train.train(work / "data-with-val", out, _settings(qwen3, max_steps=2, lora_r=4, init_adapter=str(adapter)),
                       progress=False)

    def losses(folder):
        rows = [json.loads(x) for x in (folder / train.TRAIN_LOG).read_text().splitlines()]
        return [r["loss"] for r in rows if "loss" in r]

    fresh, warm = losses(adapter), losses(out)
    assert warm[0] < fresh[0] - 0.1 and warm[0] < fresh[-1] + 0.2
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 8  # the adapter's rank, not lora_r=4
    assert meta["hyperparameters"]["init_adapter"] == str(adapter) and meta["hyperparameters"]["lora_r"] == 8
    with pytest.raises(train.TrainError, match="adapter_config.json"):
        train.train(work / "data-with-val", tmp_path / "bad", _settings(qwen3, max_steps=1, init_adapter=str(tmp_path)),
                    progress=False)


def test_max_train_seconds_stops_at_a_step_end_and_saves(work, qwen3, tmp_path):
    """A time budget (max_train_seconds): the run stops at the first step end past it, saves the adapter and says
    where it stopped in the metadata; the planned steps stay recorded."""
    out = tmp_path / "timed"
    meta = train.train(work / "data-with-val", out, _settings(qwen3, max_steps=50, max_train_seconds=1e-6),
                       progress=False)
    stop = meta["train"]["stopped_by_time"]
    assert stop["step"] == meta["train"]["steps"] == 1 and stop["planned_steps"] == 50
    assert (out / "adapter_model.safetensors").is_file()
    assert json.loads((out / "loralint.json").read_text())["train"]["stopped_by_time"]["step"] == 1
