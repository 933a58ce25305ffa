"""Pure: normalize, gifts/streaks, ranking, battle, chat, reduce, wire shapes.

No trio, no logging, no clock reads: time comes in as an argument. Imports are
limited to the standard library, attrs, cattrs, immutables and ``meksd.model``
(``tests/test_layering.py`` checks).

Modules, each about one thing:

``normalize``  untrusted feed records -> typed events, ``Rejected`` or ``Unknown``
``dedup``      the bounded msgId memory
``gifts``      counting gifts: streaks, end events, timeouts, late events
``ranking``    leaderboard rows and rank order
``battle``     battle status and armies
``chat``       the chat ring
``reduce``     the room reducers composing the above: ``reduce``, ``expire``...
``delta``      conflating two deltas into one
``wire``       JSON-ready snapshot/delta messages and the reference ``apply_delta``
``protocol``   dashboard (client) messages from decoded JSON
``access``     tokens, grants, origins: the verdict on a dashboard's handshake
``limits``     the per-connection message rate (token bucket with strikes)

Import from the modules (``from meksd.core.reduce import reduce``); this package
re-exports nothing, so that ``meksd.core.reduce`` always names the module.
"""
