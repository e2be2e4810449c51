"""prefixkv's native kernels, in one place: the C sources and everything that touches them.

- ``csrc/``: the C (attention, the linear layers, RMS norm and SiLU * up) and ``abi.h``,
  the calling convention;
- :mod:`.build`: compiles the library once per machine and loads it; :func:`.build.identity`
  names what it is (sources, flags, compiler, what ``-march=native`` means on this CPU);
- :mod:`.trust`: loads a library only if no one else could have written it;
- :mod:`.target`: what the compiler targets with ``-march=native`` here;
- :mod:`.abi`: ``abi.h`` mirrored in ctypes;
- :mod:`.ops`: the one door: every call into the library, tensors in, every dtype, device,
  stride, shape and bound checked (:class:`.ops.Kernels`);
- :mod:`.items`: an attention step's index arrays, checked once when built.

The modules that use the kernels (``prefixkv.engine.native_linear``, ``native_layers``,
``batch/native``) go through :mod:`.ops` only.
"""
