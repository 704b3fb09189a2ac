"""Reading programs lowered for an accelerator this machine does not have."""

# The custom call each accelerator backend lowers to, by (backend, platform).
KERNEL_CALLS = {("pallas", "tpu"): "tpu_custom_call",
                ("triton", "cuda"): "__gpu$xla.gpu.triton"}


def custom_call_lines(text: str, target: str) -> list[str]:
  """The lines of lowered StableHLO `text` that call `target`."""
  return [line for line in text.splitlines() if f"custom_call @{target}" in line]


def operand_types(line: str) -> str:
  """The `(operand types) -> (result types)` signature at the end of a
  custom_call line."""
  return line[line.rindex(" : (") + 3:]
