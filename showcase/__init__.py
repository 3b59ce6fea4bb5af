"""What people see: spec → Gradio demo, the model server, the Streamlit gallery."""
