"""Re-read what Megatron runs logged (console logs, ``progress.txt``, TensorBoard runs).

``__all__`` below is the stable surface (docs/api.md, docs/relog.md "From Python"); the
modules behind it each do one job: ``console`` and ``progress`` parse the lines (standard
library only), ``tensorboard`` reads the TensorBoard tags (needs the ``tensorboard`` extra,
imported only when a run is read), ``reading`` yields one run's records, ``segments``
settles each run segment's shape, ``intervals`` recomputes every logged interval,
``summary`` keeps the statistics, ``relog`` drives them, ``outputs`` are the sinks (table,
JSON, CSV, TensorBoard, plot).  The command line, ``megatron-flops relog``, is
:mod:`megatron_flops.commands.relog`.
"""

from .arguments import merge_flags, namespace_from_arguments
from .console import LogRecord, ParseStats, parse_console_log, parse_line
from .intervals import Interval, Relogger
from .outputs import CsvOutput, JsonOutput, PlotOutput, TableOutput, TensorBoardOutput, summary_lines
from .reading import read_records, read_run
from .relog import relog, relog_run
from .segments import Segment, segment_from_log, settle_segment
from .summary import Summary

__all__ = [
    "CsvOutput", "Interval", "JsonOutput", "LogRecord", "ParseStats", "PlotOutput", "Relogger",
    "Segment", "Summary", "TableOutput", "TensorBoardOutput", "merge_flags",
    "namespace_from_arguments", "parse_console_log", "parse_line", "read_records", "read_run",
    "relog", "relog_run", "segment_from_log", "settle_segment", "summary_lines",
]
