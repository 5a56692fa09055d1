"""The user's errors, apart from the program's.

A :class:`UsageError` is bad input from whoever runs the tool or calls the library: a flag's
value, a file that is not what it should be, a combination that cannot be counted.  A
:class:`ShapeError` is the kind that describes a model or run Megatron would refuse.  Both
carry one line that names the flag (``flag``, when there is one); the command line prints
that line and exits 2 (:func:`megatron_flops.commands.common.run_guarded`).  Anything else
raised is a bug and keeps its traceback.

Both subclass ``ValueError``, so a Python caller's ``except ValueError`` keeps working.
"""

from typing import Optional

__all__ = ["ShapeError", "UsageError"]


class UsageError(ValueError):
    """Bad input from the user: one line that names the flag (or file) and the constraint.

    ``flag`` is the command-line flag at fault (``--peak-tflops``), when there is one.
    """

    def __init__(self, message: str, flag: Optional[str] = None):
        super().__init__(message)
        self.flag = flag


class ShapeError(UsageError):
    """A model or run description that Megatron would refuse, or that contradicts itself.

    ``flag`` is the command-line flag at fault (``--num-attention-heads``), when there is one.
    """
