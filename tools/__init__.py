"""Concrete tools: calculator, python sandbox, retriever."""
