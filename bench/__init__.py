"""`make bench`: ccq measured against what it wraps, each ratio from one run.

* warm turn: POST a prompt to a live session until the CLI's ``result`` arrives on a
  tail, against ``docker exec ... claude -p`` in an idle container made like a session's;
* cold session: POST a new session until its ``result`` arrives, against ``docker run``
  of the same image and CLI;
* event delivery: an event appended as the worker does, until 1, 100 and 500 WebSocket
  tails have it, against as many raw ``XREAD BLOCK`` readers of the same stream;
* submit: N prompts as one ``POST /batches`` until its 201, against N ``POST /sessions``
  one after another (on a stack without a worker: nothing runs).

Everything runs on an isolated stack (``bench.stack``) that is removed afterwards.
"""


class BenchError(Exception):
    """A measurement could not be taken (the CLI failed, a stream closed early...)."""
