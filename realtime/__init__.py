"""The real-time half, in two sides.

Robot side (numpy, onnxruntime, pyzmq, msgpack, Hydra; no torch, no
world-model code, installable alone with ``pip install .``): the export
signature (``signature``), the policy runtime (``runtime``), the control loop
(``loop``), ``reverie eval`` (``evaluate``), the experience recorder, the
ZeroMQ channels and their message protocol, CURVE (``security``,
``endpoints``), status files and queries (``status``) and the actor.

Learner side (the full install, torch): the exporter (``policy_step``, ``quantize``,
``export``), the learner and ``reverie run`` (``launcher``).
"""
