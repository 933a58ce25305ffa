"""meksd: a live-stream event broker.

Room feeds (TikTok LIVE through a connector relay, or anything speaking the same
JSON) come in; leaderboards, battles, chat and counters go out to dashboards over
WebSocket. See ``docs/architecture.md``.
"""

__version__ = "0.1.0"
