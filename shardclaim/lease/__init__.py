"""The lease protocol: everything that decides who may write a shard (or the finalizer's marker).

* :mod:`~shardclaim.lease.fenced` — :class:`FencedLease`, the one object through which a holder writes:
  each write is conditioned on the generation the holder last wrote, a refusal ends the lease for good.
* :mod:`~shardclaim.lease.heartbeat` — the background driver that renews leases and never dies.
* :mod:`~shardclaim.lease.shard` — pure transitions of a shard's document (claim, renew, checkpoint,
  complete, fail, release, reset), expiry on the store's clock, and how a document is encoded.
* :mod:`~shardclaim.lease.views` — what one listing says about every shard (object metadata as a cache
  of the document, the document read where the cache is missing or garbled); candidates to claim.
* :mod:`~shardclaim.lease.finalizer` — the fan-in marker's document and the settled-state digest.

Nothing here knows about worker loops, commands or the command line; those sit above
(:mod:`shardclaim.manager`, :mod:`shardclaim.worker`, :mod:`shardclaim.run`, :mod:`shardclaim.cli`).
"""
