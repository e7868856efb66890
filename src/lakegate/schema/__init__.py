"""Schema intelligence: detect upstream schema drift, match fields, synthesize and validate transforms.

Reads contract profiles through ``lakegate.contracts``' public API and returns proposals; it never
writes to the registry or the audit log itself (the runtime records its decisions).
"""
