"""The review station (``medblip review``): a radiologist signs, edits or rejects each AI report.

Parts, one job each: :mod:`.store` (the review tables in the spool's journal: items, signed
reports, rejections, the audit trail), :mod:`.accounts` (reviewers, argon2 password hashes, API
tokens, login throttling), :mod:`.signing` (the VERIFIED SR and the IOCM rejection note),
:mod:`.intake` (delivery hands each AI report to the review), :mod:`.render` (the image through the
one pixel path), :mod:`.security` (sessions, CSRF, the one authentication dependency),
:mod:`.app` with :mod:`.pages` and :mod:`.api` (the FastAPI app), :mod:`.feedback` (export and stats).
"""
