"""The example pack's nodes. No models, no torch: they run anywhere."""

CASES = {
    "upper": str.upper,
    "lower": str.lower,
    "title": str.title,
    "capitalize": str.capitalize,
    "swapcase": str.swapcase,
}


class TextCase:
    """Change the letter case of a text."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "text": ("STRING", {"default": "", "multiline": True}),
                "case": (list(CASES), {"default": "upper"}),
            }
        }

    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("text",)
    FUNCTION = "apply"
    CATEGORY = "utils/text"
    DESCRIPTION = "Change the letter case of a text: upper, lower, title, capitalize or swapcase."

    def apply(self, text, case):
        return (CASES[case](text),)


class ShowText:
    """Show a text in the node's UI (and in the prompt's history) and pass it on."""

    @classmethod
    def INPUT_TYPES(cls):
        # forceInput: a socket, not a text box, since the text comes from another node.
        return {"required": {"text": ("STRING", {"forceInput": True})}}

    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("text",)
    FUNCTION = "show"
    OUTPUT_NODE = True
    CATEGORY = "utils/text"
    DESCRIPTION = "Display a text from another node; also passes it through."

    def show(self, text):
        return {"ui": {"text": [text]}, "result": (text,)}
