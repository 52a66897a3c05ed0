from .tokenizer import Tokenizer, load_tokenizer
