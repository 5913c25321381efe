"""One model load at a time in a process.

diffusers' ``from_pretrained`` swaps process-wide functions for the length of a load — accelerate's
``init_empty_weights`` replaces ``nn.Module.register_parameter``, diffusers' ``no_init_weights`` the
``torch.nn.init`` functions — and puts back what it found when the load ends. Two loads in two threads
interleave those swaps: the second saves the first's replacement as "the original" and restores it last, so every
module built afterwards in the process gets its parameters on the meta device ("Cannot copy out of meta tensor")
or skips its initialisation. Two model caches in one process (a warm start beside a request, two services, a
research view's lab) can load at the same moment, so every load in the runtime holds :data:`LOADING`.
"""

from __future__ import annotations

import threading

LOADING = threading.RLock()
