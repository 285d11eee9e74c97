"""Take a run's model where it will run: a plain transformers folder, a GGUF file for llama.cpp and
Ollama (causal LMs of the Llama family), an ONNX model for ONNX Runtime (the encoder tasks).
`export(run, out, format=...)` checks the request, writes to a temporary name and renames."""
