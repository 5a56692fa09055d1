"""Patching ``megatron.training`` when it is imported: a ``sys.meta_path`` finder that finds
the module with the other finders and wraps its loader, so the hook patches the module as
soon as it has executed (its functions defined, nothing of it run yet)."""

import importlib.abc
import sys

TRAINING_MODULE = "megatron.training"
# NVIDIA Megatron-LM: ``megatron.training`` is a package; training_log lives in its submodule
MEGATRON_LM_TRAINING_MODULE = "megatron.training.training"
TRAINING_MODULES = (TRAINING_MODULE, MEGATRON_LM_TRAINING_MODULE)


class _PatchingLoader(importlib.abc.Loader):
    """Runs the real loader, then patches the freshly executed ``megatron.training``."""

    def __init__(self, loader, hook):
        self._loader = loader
        self._hook = hook

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        self._hook.patch(module)

    def __getattr__(self, name):  # get_source, get_filename, … for tracebacks and inspect
        return getattr(self._loader, name)


class TrainingImportFinder(importlib.abc.MetaPathFinder):
    """Finds ``megatron.training`` with the other finders and wraps its loader."""

    def __init__(self, hook):
        self.hook = hook
        self._busy = False

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in TRAINING_MODULES or self._busy:
            return None
        self._busy = True
        try:
            for finder in sys.meta_path:
                if finder is self or not hasattr(finder, "find_spec"):
                    continue
                spec = finder.find_spec(fullname, path, target)
                if spec is not None:
                    break
            else:
                return None
        finally:
            self._busy = False
        if spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _PatchingLoader(spec.loader, self.hook)
        return spec
