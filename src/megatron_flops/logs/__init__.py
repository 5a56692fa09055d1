"""Re-read what Megatron-DeepSpeed runs logged (console logs, TensorBoard runs).

``console`` parses the ``training_log`` line of both forks (standard library only);
``tensorboard`` reads the forks' TensorBoard tags (needs the ``tensorboard`` extra);
``relog`` recomputes every logged interval with exact FLOPs and keeps the statistics;
``outputs`` are the sinks its intervals go to (table, JSON, CSV, TensorBoard, plot).  The
command line, ``megatron-flops relog``, is :mod:`megatron_flops.commands.relog`.
"""

from .console import LogRecord, ParseStats, parse_console_log, parse_line

__all__ = ["LogRecord", "ParseStats", "parse_console_log", "parse_line"]
