"""The kinds of deliberate mistake a student is asked to make, in words: synth asks for them, the gate checks them."""

MISTAKE_DESCRIPTIONS = {
    "factual": "state a fact from the text incorrectly",
    "reasoning": "draw a conclusion that does not follow from the facts",
    "calculation": "make an arithmetic or unit error in a calculation",
    "omission": "leave out a step or a part the assignment asks for",
    "misreading": "misread what the assignment asks and answer a slightly different question",
    "terminology": "use a technical term with the wrong meaning",
}
