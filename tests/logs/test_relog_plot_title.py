"""Issue 24: a long model description does not run off the relog plot's sides."""

import pytest

matplotlib = pytest.importorskip("matplotlib")


def test_a_long_title_stays_inside_the_figure(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    from megatron_flops.logs import outputs
    from megatron_flops.report import describe_model
    from megatron_flops.shapes import ModelShape
    model = ModelShape(num_layers=61, hidden_size=7168, num_attention_heads=128,
                       vocab_size=129280, ffn_hidden_size=18432, glu_activation="swiglu",
                       num_query_groups=8, num_experts=256, moe_topk=8,
                       moe_ffn_hidden_size=2048, position_embedding="rotary")
    title = f"{describe_model(model)}\nrecompute full; 2048 GPUs; a-long-run-name.log"
    assert len(title.splitlines()[0]) > 170
    series = outputs.PlotSeries()
    for i in (10, 20):
        series.iteration.append(i)
        series.logged.append(float("nan"))
        series.model.append(1.0)
        series.hardware.append(1.0)
        series.mfu.append(0.1)
        series.hfu.append(0.1)
    drawn = []
    monkeypatch.setattr(plt, "close", lambda figure: drawn.append(figure))
    outputs.draw_plot(series, str(tmp_path / "plot.png"), title, 10.0, {"bigscience"})
    figure = drawn[0]
    box = figure.axes[0].title.get_window_extent(figure.canvas.get_renderer())
    assert box.x0 >= 0 and box.x1 <= figure.bbox.width
    assert box.y1 <= figure.bbox.height
