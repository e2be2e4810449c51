"""Continuous batching: many requests share each forward pass, their KV in the pool.

- :mod:`.runner`: :class:`BatchRunner`, the step loop (admission, preemption, sampling)
- :mod:`.plan`: which tokens a step feeds (decode first, then prefill chunks) and where
  their KV goes
- :mod:`.attention`: attention over pool blocks via transformers' ``AttentionInterface``
  and a ``Cache`` subclass
- :mod:`.sequence`: one request's state in the batch, and the sink it reports to
- :mod:`.policy`: admission order (``fcfs``, ``lpm``)
- :mod:`.records`: :class:`BatchLimits`, :class:`StepReport`
"""
