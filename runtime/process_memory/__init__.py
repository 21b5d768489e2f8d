"""The process's memory: peak RSS, the RSS timeline and its phase marks, and giving freed heap back."""
