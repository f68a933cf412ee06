"""`sharp-export batch`: bulk photo -> scene conversion on Ray (a local Ray or a cluster), resumable.

inputs.py lists INPUT (folder, glob, list file; any pyarrow filesystem); plan.py decides what to skip and holds
the folder lock; worker.py is the actor (model opened once, decode -> infer -> write per image); manifest.py the
Parquet manifest and the journals that feed it; engine.py runs Ray; summary.py the table at the end.
Nothing here is imported for `sharp-export --help`.
"""
