"""ccq's server-side core, by who runs it: ``domain`` and ``db`` (everyone), ``runtime``
(worker hosts), ``streams``, ``notify`` and ``auth``. It never imports ``api``, ``tasks``
or the client packages."""
