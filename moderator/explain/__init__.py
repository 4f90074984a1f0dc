"""Why a verdict was decided: an audit record and its policy document → the decision path.

`build` makes an `Explanation` (model.py) from what the record carries and the decision table of
the policy it was decided under; `render` turns it into plain-text lines, a short `because`
cell and JSON. `lookup` gathers the record, the policy document and the cache's original
judgement through a reader the caller passes in (the audit store). Pure: no I/O of its own.
"""
