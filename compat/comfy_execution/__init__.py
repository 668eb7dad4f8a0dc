"""Import paths of ComfyUI's execution helpers, so plugins written against them load unchanged.

The implementations live in graph/; these modules only re-export them under ComfyUI's names.
"""
