"""Property-based bad inputs (Hypothesis): mutated data files and mutated manifests. Whatever the
mutation, `run` / `verify` either succeed (exit 0, for a mutation that leaves a valid input) or meet the
bad-input contract (exit 2, one stderr line, no traceback, no output file, nothing left beside it);
never an internal error (exit 1)."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.robustness.corpus import Case, make_base, run_case

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return make_base(tmp_path_factory.mktemp("props") / "base")


def _check(base: Path, work: Path, case: Case) -> None:
    outcome = run_case(case, base, work)
    if outcome.code == 0:
        assert not outcome.changed, outcome
        return
    problems = [p for p in outcome.problems(case) if not p.startswith("message lacks")]
    assert not problems, (problems, outcome.stderr)


dtypes = st.sampled_from(["float32", "float64", "float16", "int64", "int32", "uint8", "bool", "complex64"])
dims = st.lists(st.integers(0, 4), min_size=0, max_size=5)


@st.composite
def arrays(draw):
    if draw(st.booleans()):  # often the right shape, so the later checks (dtype, values) are reached
        shape = (draw(st.integers(0, 3)), 3, 12, 12)
    else:
        shape = tuple(draw(dims))
    dtype = draw(dtypes)
    values = np.zeros(shape, dtype)
    special = draw(st.sampled_from([None, np.nan, np.inf, -np.inf, 1e30]))
    if special is not None and values.size and np.dtype(dtype).kind in "fc":
        with np.errstate(over="ignore"):
            values.flat[0] = special
    return values


@st.composite
def npz_contents(draw):
    names = draw(st.lists(st.sampled_from(["input", "labels", "image", "extra", "input.npy"]), max_size=3, unique=True))
    return {name: draw(arrays()) for name in names}


@SETTINGS
@given(contents=npz_contents())
def test_mutated_data_files(base, tmp_path_factory, contents):
    def setup(w: Path) -> list[str]:
        np.savez(w / "data.npz", **{k.removesuffix(".npy"): v for k, v in contents.items()})
        return ["run", "art", "--input", "data.npz", "-o", "y.npz"]

    _check(base, tmp_path_factory.mktemp("npz"), Case("npz", "property", setup, "y.npz"))


@SETTINGS
@given(labels=st.lists(st.integers(-(2**40), 2**40), min_size=0, max_size=10), as_float=st.booleans())
def test_mutated_labels(base, tmp_path_factory, labels, as_float):
    def setup(w: Path) -> list[str]:
        data = dict(np.load(w / "eval.npz"))
        data["labels"] = np.array(labels, np.float64 if as_float else np.int64)
        np.savez(w / "l.npz", **data)
        return ["verify", "art", "--model", "model.onnx", "--data", "l.npz", "--json", "m.json"]

    _check(base, tmp_path_factory.mktemp("labels"), Case("labels", "property", setup, "m.json"))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=6,
)


def _paths(doc, prefix=()):
    yield prefix
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _paths(v, (*prefix, i))


@st.composite
def manifest_mutations(draw, manifest):
    doc = copy.deepcopy(manifest)
    paths = [p for p in _paths(doc) if p]
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(paths))
        parent = doc
        try:
            for key in path[:-1]:
                parent = parent[key]
            if draw(st.booleans()) and isinstance(parent, dict):
                parent.pop(path[-1], None)
            else:
                parent[path[-1]] = draw(json_values)
        except (KeyError, IndexError, TypeError):
            continue
    return doc


@pytest.fixture(scope="module")
def manifest(base):
    return json.loads((base / "art" / "manifest.json").read_text())


def test_manifest_mutations(base, manifest, tmp_path_factory):
    @SETTINGS
    @given(doc=manifest_mutations(manifest))
    def check(doc):
        def setup(w: Path) -> list[str]:
            (w / "art" / "manifest.json").write_text(json.dumps(doc))
            return ["run", "art", "--input", "x.npz", "-o", "y.npz"]

        work = tmp_path_factory.mktemp("manifest")
        _check(base, work, Case("manifest", "property", setup, "y.npz"))
        shutil.rmtree(work, ignore_errors=True)

    check()
