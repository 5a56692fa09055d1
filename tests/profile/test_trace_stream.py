"""``profile`` on hostile traces (issue 23 item 7): the trace is streamed (memory follows the
events kept, not the file), a cut ``.json.gz`` or ``.json`` is read up to the cut with a note
that counts what was read, no nesting depth recurses, and running out of memory says so.

The traces are written here by hand in the format ``torch.profiler`` exports (the GPU layout
of tests/profile/test_gpu_trace_and_command.py: host ops, runtime launches and kernels linked
by correlation ids, one ``ProfilerStep#N`` span per iteration)."""

import gzip
import json
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from megatron_flops.commands import main
from megatron_flops.profile import jsonstream
from megatron_flops.profile.attribute import attribute
from megatron_flops.profile.jsonstream import JSONStream, JSONStreamError, parse_iterative
from megatron_flops.profile.trace import load_trace
from megatron_flops.shapes import RunShape
from trace_helpers import FLAGS, MODEL, kernel, op  # noqa: E402

RUN = RunShape(seq_length=24, micro_batch_size=2)


def step_events(number, t0, correlation0=0):
    """One 100 µs step: a fused QKV addmm (30 µs of GEMM), a layer norm, an all-reduce."""
    c = correlation0
    return [
        op(f"ProfilerStep#{number}", t0, 100, cat="user_annotation"),
        op("aten::linear", t0 + 1, 10),
        op("aten::addmm", t0 + 2, 8, **{"Input Dims": [[96], [48, 64], [64, 96], [], []],
                                        "Sequence number": 10 + number, "Ev Idx": 3,
                                        "Input type": ["float", "float", "float", "Scalar",
                                                       "Scalar"]}),
        op("cudaLaunchKernel", t0 + 3, 2, cat="cuda_runtime", correlation=c + 1),
        {"ph": "s", "id": c + 1, "pid": 1, "tid": 1, "ts": t0 + 3, "cat": "ac2g", "name": "ac2g"},
        op("aten::layer_norm", t0 + 12, 5),
        op("cudaLaunchKernel", t0 + 13, 2, cat="cuda_runtime", correlation=c + 2),
        op("record_param_comms", t0 + 20, 5),
        op("cudaLaunchKernel", t0 + 21, 2, cat="cuda_runtime", correlation=c + 3),
        kernel("sm90_xmma_gemm_bf16bf16_bf16f32", t0 + 10, 30, c + 1),
        kernel("vectorized_layer_norm_kernel", t0 + 40, 10, c + 2),
        kernel("ncclDevKernel_AllReduce_Sum_bf16_RING_LL", t0 + 45, 20, c + 3, stream=8),
    ]


def document(steps=3, extra=None):
    events = [{"ph": "M", "name": "process_name", "pid": 1, "tid": 0, "args": {"name": "python"}}]
    for number in range(1, steps + 1):
        events += step_events(number, 1000 * number, 10 * number)
    data = {"schemaVersion": 1, "deviceProperties": [{"id": 0, "name": "NVIDIA H100 80GB HBM3"}],
            "traceEvents": events, "traceName": "rank0"}
    data.update(extra or {})
    return data


def write_trace(path, data, indent=None):
    text = json.dumps(data, indent=indent)
    if str(path).endswith(".gz"):
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)
    return path


def profile_json(capsys, path, *extra):
    code = main(["profile", str(path), *FLAGS, "--peak-tflops", "100", "--json", *extra])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured


# ---- the incremental reader itself ----------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=30)


class Pieces:
    """A binary stream of ``text`` in UTF-8 that hands out at most ``size`` bytes per read."""

    def __init__(self, text, size):
        self.data, self.size, self.at = text.encode(), size, 0

    def read(self, n):
        piece = self.data[self.at:self.at + min(n, self.size)]
        self.at += len(piece)
        return piece


@settings(max_examples=200, deadline=None)
@given(values=st.lists(json_values, max_size=6), chunk=st.integers(1, 40),
       indent=st.sampled_from([None, 0, 2]), ascii=st.booleans())
def test_streamed_array_equals_json_loads(values, chunk, indent, ascii):
    text = json.dumps(values, indent=indent, ensure_ascii=ascii)  # cut inside UTF-8 sequences too
    stream = JSONStream(Pieces(text, chunk), chunk=chunk)
    stream.take("[", "'['")
    assert list(stream.items()) == json.loads(text)
    stream.end()


@settings(max_examples=200, deadline=None)
@given(value=json_values)
def test_iterative_parser_equals_json_loads(value):
    text = json.dumps(value)
    assert parse_iterative(text, 0) == (json.loads(text), len(text))


@settings(max_examples=150, deadline=None)
@given(value=json_values, cut=st.integers(0, 10 ** 6), chunk=st.integers(1, 40))
def test_cut_document_is_truncated_or_malformed_never_a_wrong_value(value, cut, chunk):
    text = json.dumps([value, value])
    cut = cut % len(text)
    stream = JSONStream(Pieces(text[:cut], chunk), chunk=chunk)
    with pytest.raises(JSONStreamError):
        stream.take("[", "'['")
        list(stream.items())
        stream.end()


@pytest.mark.parametrize("depth", [1000, 5000, 100_000])
def test_any_depth_is_read_without_recursion(depth):
    text = "[" * depth + "1" + "]" * depth
    stream = JSONStream(Pieces(text, 4096), chunk=4096)
    value = stream.value()
    for _ in range(depth):
        (value,) = value
    assert value == 1


# ---- load_trace and the command ---------------------------------------------------------------

def test_streamed_trace_matches_the_hand_derivation_at_every_chunk_size(tmp_path, monkeypatch):
    """Three 100 µs steps (the derivation of test_gpu_trace_and_command.py, per step): query
    20 µs and key_value 10 µs of the fused QKV's 30 µs (64 : 32 output columns), norms 10,
    exposed communication 15, idle 45.  Read in pieces of 7 characters (events cut anywhere)."""
    path = write_trace(tmp_path / "trace.json", document(3), indent=1)
    monkeypatch.setattr(jsonstream, "CHUNK", 7)
    monkeypatch.setattr(jsonstream, "PIECE", 7)
    trace = load_trace(str(path))
    assert [s.number for s in trace.steps] == [1, 2, 3] and trace.notes == []
    assert trace.device_name() == "NVIDIA H100 80GB HBM3"
    profile = attribute(trace, MODEL, RUN)
    rows = {r.component: r for r in profile.rows}
    assert rows["query"].seconds == pytest.approx(3 * 20e-6)
    assert rows["key_value"].seconds == pytest.approx(3 * 10e-6)
    assert profile.categories["norms"] == pytest.approx(3 * 10e-6)
    assert profile.categories["communication"] == pytest.approx(3 * 15e-6)
    assert profile.categories["idle (device)"] == pytest.approx(3 * 45e-6)


@pytest.mark.parametrize("suffix", [".json.gz", ".json"])
def test_cut_trace_is_read_to_the_cut_with_a_note(suffix, tmp_path, capsys):
    whole = write_trace(tmp_path / f"whole{suffix}", document(6))
    data = whole.read_bytes()
    # cut inside the sixth step's events (the .json.gz: four fifths of its bytes, past the
    # second step whatever the compression): steps 1 and 2 are whole
    if suffix == ".json":
        cut = data.index(b'"ProfilerStep#6"') + 200
    else:
        cut = len(data) * 4 // 5
    cut_path = tmp_path / f"cut{suffix}"
    cut_path.write_bytes(data[:cut])
    code, captured = profile_json(capsys, cut_path, "--steps", "1", "2")
    assert code == 0, captured.err
    assert "is truncated" in captured.err and "complete events" in captured.err
    result = json.loads(captured.out)
    assert len(result["trace_notes"]) == 1 and "truncated" in result["trace_notes"][0]
    code, whole_captured = profile_json(capsys, whole, "--steps", "1", "2")
    expected = json.loads(whole_captured.out)
    assert expected["trace_notes"] == []
    result.pop("trace_notes"), expected.pop("trace_notes")
    result.pop("trace"), expected.pop("trace")
    assert result == expected  # the whole steps before the cut are read exactly


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.floats(0, 1), flip=st.none() | st.tuples(st.floats(0, 1), st.integers(0, 255)),
       gz=st.booleans(), indent=st.sampled_from([None, 1]))
def test_damaged_traces_exit_0_with_a_note_or_2_with_one_line(cut, flip, gz, indent, tmp_path_factory,
                                                             capsys):
    folder = tmp_path_factory.mktemp("damaged")
    suffix = ".json.gz" if gz else ".json"
    data = write_trace(folder / f"whole{suffix}", document(2), indent=indent).read_bytes()
    data = bytearray(data[:int(cut * len(data))])
    if flip is not None and data:
        where, value = flip
        data[min(int(where * len(data)), len(data) - 1)] = value
    path = folder / f"damaged{suffix}"
    path.write_bytes(bytes(data))
    code, captured = profile_json(capsys, path)
    assert code in (0, 2)
    if code == 2:
        assert len(captured.err.strip().splitlines()) == 1, captured.err
    elif flip is None and cut < 1:
        # a shorter file is never read silently (a .json.gz cut in its 8-byte trailer holds the
        # whole JSON: said as a stream that ends early, its checksum unverified)
        assert "truncated" in captured.err or "ends early" in captured.err, captured.err


def test_gzip_cut_in_its_trailer_is_noted(tmp_path, capsys):
    whole = write_trace(tmp_path / "whole.json.gz", document(2))
    cut = tmp_path / "cut.json.gz"
    cut.write_bytes(whole.read_bytes()[:-4])  # the deflate data whole, the size field cut
    code, captured = profile_json(capsys, cut)
    assert code == 0 and "ends early" in captured.err and "checksum" in captured.err
    assert len(json.loads(captured.out)["trace_notes"]) == 1


@pytest.mark.parametrize("depth", [1500, 20_000])
def test_deep_nesting_in_the_json(depth, tmp_path, capsys):
    deep = "[" * depth + "]" * depth
    events = json.dumps(document(1)["traceEvents"])
    text = ('{"deviceProperties": [], "junk": ' + deep + ', "traceEvents": ['
            + '{"ph": "X", "name": "deep", "ts": 1001, "dur": 1, "pid": 1, "tid": 1, "args": '
            + '{"Input Dims": ' + deep + ', "Sequence number": ' + deep + '}}, '
            + events[1:] + "}")
    path = tmp_path / "deep.json"
    path.write_text(text)
    code, captured = profile_json(capsys, path)
    assert code == 0, captured.err


def test_1500_identical_nested_spans(tmp_path, capsys):
    """A CPU trace (no kernels: the rest of the iteration is walked on the host spans): the
    100 µs step holds aten::linear (10 µs, its addmm 8 µs) and 1,500 identical aten::add spans
    of 5 µs, each nested in the one before.  By hand: the addmm is the matmul (8 µs);
    elementwise is linear's own 2 µs + the innermost add's 5 µs (the others' self time is 0);
    host is the step's own 100 − 10 − 5 = 85 µs."""
    events = [e for e in step_events(1, 1000) if e["cat"] in ("cpu_op", "user_annotation")
              and e["name"] != "record_param_comms"]
    events = [e for e in events if e["name"] not in ("aten::layer_norm",)]
    events += [op("aten::add", 1070, 5) for _ in range(1500)]
    path = write_trace(tmp_path / "nested.json", {"traceEvents": events})
    code, captured = profile_json(capsys, path)
    assert code == 0, captured.err
    trace = load_trace(str(path))
    depth, node = 0, [e for e in trace.events if e.name == "aten::add"][-1]
    while node.parent is not None:
        depth, node = depth + 1, node.parent
    assert depth == 1500  # 1,499 adds above the innermost, then the step
    result = json.loads(captured.out)
    categories = result["categories"]
    assert result["device"] == "cpu"
    assert categories["elementwise and other ops"] == pytest.approx(7e-6)
    assert categories["host (python, framework, between ops)"] == pytest.approx(85e-6)
    assert sum(c["seconds"] for c in result["components"]) == pytest.approx(8e-6)


def test_out_of_memory_says_so(tmp_path, capsys, monkeypatch):
    path = write_trace(tmp_path / "trace.json", document(2))

    def no_memory(*args, **kwargs):
        raise MemoryError()
    # wherever the JSON is decoded (json.load on main, the C scanner here), memory runs out
    monkeypatch.setattr(json, "load", no_memory)
    monkeypatch.setattr(json, "loads", no_memory)
    monkeypatch.setattr(json.JSONDecoder, "raw_decode", no_memory)
    monkeypatch.setattr(json.JSONDecoder, "__init__", lambda self, *a, **k: setattr(self, "scan_once", no_memory))
    code, captured = profile_json(capsys, path)
    assert code == 2 and len(captured.err.strip().splitlines()) == 1
    assert "out of memory" in captured.err and "too large to compute" not in captured.err


def test_memory_follows_the_events_kept_not_the_file(tmp_path, monkeypatch):
    """A 12 MB trace of which 1 record in 50 is a complete event: reading it must not hold
    the file's records (json.load of it peaks at several times the file), only the events
    kept and the reading buffer (64 KiB here; 1 MiB by default)."""
    monkeypatch.setattr(jsonstream, "CHUNK", 1 << 16)
    events = []
    for i in range(30_000):
        events.append({"ph": "f", "id": i, "pid": 1, "tid": 1, "ts": 1000 + i, "cat": "ac2g",
                       "name": "ac2g", "bp": "e", "args": {"pad": "x" * 300}})
        if i % 50 == 0:
            events.append(op("aten::add", 1000 + i, 0.5))
    events.append(op("ProfilerStep#1", 999, 40_000, cat="user_annotation"))
    path = write_trace(tmp_path / "big.json", {"traceEvents": events})
    size = path.stat().st_size
    assert size > 10e6
    tracemalloc.start()
    try:
        trace = load_trace(str(path))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(trace.events) == 30_000 // 50 + 1
    assert peak < size / 10, (peak, size)
