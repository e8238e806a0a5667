"""Judges of responses: the paper's keyword refusal judge (:mod:`.keyword`, Table 12) and the LLM judge of
attack success (:mod:`.llm`)."""
