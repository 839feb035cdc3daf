"""Lightning callbacks: the replay memory owner and adapter export."""

from svi.callbacks.adapter_export import AdapterExport
from svi.callbacks.error_replay import ErrorReplayCallback

__all__ = ["AdapterExport", "ErrorReplayCallback"]
