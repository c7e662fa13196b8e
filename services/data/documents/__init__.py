"""From a company's documents to Q&A rows: parse, chunk, generate, check (GenerateDataset's parts)."""
