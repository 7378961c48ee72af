"""Where a model trains and evaluates."""

import torch


def resolve_device(device: str | torch.device) -> torch.device:
    """``'auto'`` is CUDA when available, else the CPU; any other name or ``torch.device`` is
    checked to exist here, so that a bad one is refused before any work."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or a torch.device, "
                         f"got {device!r}.") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={device!r} was requested but CUDA is not available; use "
                             "device='auto' or 'cpu'.")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(f"device={device!r}: this machine has "
                             f"{torch.cuda.device_count()} CUDA device(s).")
    return resolved
