"""Format readers behind ``FileSource``: each turns one file into Arrow chunks, resumable mid-file.

Every reader is forward-only and holds one chunk at a time, so memory does not grow with file size.
Damage never raises out of a reader: it sets ``failure`` (where the unread part starts and why) and
finishes, so the records read before the damage flow on and the rest becomes one dead letter.

``base`` holds the reader protocol; ``scanning``, ``rows`` and ``json_decoding`` the helpers
shared between formats; one module per format holds its reader. Format modules import the shared
ones and never each other; nothing here imports ``lakegate.sources.files``, which picks the reader.
"""
