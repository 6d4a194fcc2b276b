"""The RSSM world model: networks, distributions, encoder, decoder, heads, loss."""
