"""Writes json-answers.jsonl: the demo dataset of Finetune Studio.

Every assistant answer is a JSON object {"answer": ..., "confidence": "high"|"medium"|"low"}
- a shape SmolLM2-135M-Instruct never uses on its own, so a viewer sees the change after a few
minutes of LoRA training. Deterministic (seeded); run `python3 assets/demo/make_dataset.py`.
"""
import json
import random
from pathlib import Path

rng = random.Random(7)
examples = []


def add(question, answer, confidence):
    content = json.dumps({"answer": answer, "confidence": confidence}, ensure_ascii=False)
    examples.append({"messages": [{"role": "user", "content": question},
                                  {"role": "assistant", "content": content}]})


capitals = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Portugal": "Lisbon",
    "Japan": "Tokyo", "China": "Beijing", "India": "New Delhi", "Canada": "Ottawa", "Australia": "Canberra",
    "Brazil": "Brasilia", "Argentina": "Buenos Aires", "Mexico": "Mexico City", "Egypt": "Cairo",
    "Kenya": "Nairobi", "Norway": "Oslo", "Sweden": "Stockholm", "Finland": "Helsinki", "Denmark": "Copenhagen",
    "Poland": "Warsaw", "Greece": "Athens", "Turkey": "Ankara", "Russia": "Moscow", "Ireland": "Dublin",
    "Austria": "Vienna", "Belgium": "Brussels", "Netherlands": "Amsterdam", "Switzerland": "Bern",
    "Peru": "Lima", "Chile": "Santiago", "Thailand": "Bangkok", "Vietnam": "Hanoi", "South Korea": "Seoul",
    "Indonesia": "Jakarta", "Morocco": "Rabat", "Nigeria": "Abuja", "Hungary": "Budapest",
    "Czechia": "Prague", "Iceland": "Reykjavik", "New Zealand": "Wellington",
}
forms = ["What is the capital of {}?", "Which city is the capital of {}?", "Name the capital of {}.",
         "{}: what is its capital city?"]
for country, city in capitals.items():
    add(rng.choice(forms).format(country), city, "high")

for _ in range(70):
    a, b = rng.randint(2, 99), rng.randint(2, 99)
    op = rng.choice(["plus", "minus", "times"])
    value = {"plus": a + b, "minus": a - b, "times": a * b}[op]
    add(rng.choice(["What is {} {} {}?", "Compute {} {} {}.", "How much is {} {} {}?"]).format(a, op, b),
        str(value), "high")

facts = [
    ("How many legs does a spider have?", "8", "high"),
    ("How many days are in a leap year?", "366", "high"),
    ("What color is the sky on a clear day?", "blue", "high"),
    ("What gas do plants take in from the air?", "carbon dioxide", "high"),
    ("What is the largest planet in the solar system?", "Jupiter", "high"),
    ("Which planet is closest to the Sun?", "Mercury", "high"),
    ("What is the boiling point of water at sea level in Celsius?", "100", "high"),
    ("How many continents are there?", "7", "high"),
    ("Who wrote Romeo and Juliet?", "William Shakespeare", "high"),
    ("What is the chemical symbol for gold?", "Au", "high"),
    ("What is the freezing point of water in Fahrenheit?", "32", "high"),
    ("How many minutes are in an hour?", "60", "high"),
    ("What is the opposite of hot?", "cold", "high"),
    ("What is the opposite of early?", "late", "high"),
    ("What do bees make?", "honey", "high"),
    ("Which animal is known as the king of the jungle?", "the lion", "high"),
    ("What is the longest river in Africa?", "the Nile", "high"),
    ("What is the tallest mountain on Earth?", "Mount Everest", "high"),
    ("How many sides does a hexagon have?", "6", "high"),
    ("What language is spoken in Brazil?", "Portuguese", "high"),
    ("What is H2O?", "water", "high"),
    ("What is the square root of 81?", "9", "high"),
    ("How many hours are in a day?", "24", "high"),
    ("Which ocean is the largest?", "the Pacific Ocean", "high"),
    ("What is the main ingredient of guacamole?", "avocado", "high"),
    ("How many strings does a standard guitar have?", "6", "high"),
    ("What does a thermometer measure?", "temperature", "high"),
    ("Which metal is liquid at room temperature?", "mercury", "high"),
    ("What is the smallest prime number?", "2", "high"),
    ("In which year did the Second World War end?", "1945", "high"),
    ("How far is the Moon from the Earth, roughly?", "about 384,000 km", "medium"),
    ("How many people live in Tokyo?", "about 14 million in the city proper", "medium"),
    ("How long does it take to boil an egg?", "about 7 to 10 minutes", "medium"),
    ("How many words does an average novel have?", "roughly 70,000 to 100,000", "medium"),
    ("How old is the universe?", "about 13.8 billion years", "medium"),
    ("How long do cats usually live?", "about 12 to 18 years", "medium"),
    ("How many bones are in the human body?", "206 in an adult", "high"),
    ("How fast does sound travel in air?", "about 343 metres per second", "medium"),
    ("How many species of birds are there?", "around 10,000", "medium"),
    ("How deep is the Mariana Trench?", "about 11,000 metres", "medium"),
    ("How many languages are spoken in the world?", "about 7,000", "medium"),
    ("How tall is the Eiffel Tower?", "about 330 metres", "medium"),
    ("How much water should an adult drink a day?", "about 2 litres, depending on the person", "medium"),
    ("How long is a marathon?", "42.195 km", "high"),
    ("How many keys does a piano have?", "88", "high"),
    ("What will the weather be like tomorrow?", "I cannot know that without a forecast", "low"),
    ("Who will win the next football World Cup?", "nobody can know that yet", "low"),
    ("What number am I thinking of?", "I cannot know that", "low"),
    ("What will the stock market do next week?", "it cannot be predicted reliably", "low"),
    ("What is the best programming language?", "it depends on the task", "low"),
    ("What is the meaning of life?", "there is no agreed answer", "low"),
    ("Is it going to rain in Paris next month?", "I cannot know that", "low"),
    ("What will I eat for dinner?", "I cannot know that", "low"),
    ("Which movie should I watch tonight?", "that depends on your taste", "low"),
    ("What is my name?", "you have not told me", "low"),
    ("How many grains of sand are on Earth?", "perhaps around 7.5 quintillion, a rough estimate", "low"),
    ("When will humans land on Mars?", "perhaps in the 2030s, but nobody knows", "low"),
    ("Is there life on other planets?", "unknown so far", "low"),
    ("What will be invented next year?", "I cannot know that", "low"),
    ("Who is the best painter ever?", "it is a matter of taste", "low"),
]
for q, a, c in facts:
    add(q, a, c)

words = {"cat": "chat", "dog": "chien", "house": "maison", "water": "eau", "bread": "pain", "apple": "pomme",
         "book": "livre", "car": "voiture", "tree": "arbre", "sun": "soleil", "moon": "lune", "friend": "ami",
         "school": "ecole", "red": "rouge", "green": "vert", "city": "ville", "sea": "mer", "night": "nuit",
         "day": "jour", "cheese": "fromage"}
for en, fr in words.items():
    add(rng.choice(["How do you say '{}' in French?", "Translate '{}' into French.",
                    "What is the French word for '{}'?"]).format(en), fr, "high")

units = [(1, "kilometre", "metres", 1000), (1, "foot", "inches", 12), (1, "hour", "seconds", 3600),
         (1, "kilogram", "grams", 1000), (1, "mile", "kilometres", 1.609), (1, "inch", "centimetres", 2.54),
         (1, "litre", "millilitres", 1000), (1, "pound", "kilograms", 0.454), (1, "yard", "feet", 3),
         (1, "week", "days", 7), (1, "day", "minutes", 1440), (1, "metre", "centimetres", 100)]
for n, unit, target, factor in units:
    add(f"How many {target} are in {n} {unit}?", str(factor), "high" if float(factor).is_integer() else "medium")
for _ in range(30):
    c = rng.randint(-20, 40)
    f = round(c * 9 / 5 + 32, 1)
    add(rng.choice(["Convert {} degrees Celsius to Fahrenheit.", "What is {} C in F?"]).format(c),
        f"{f:g} F", "high")

rng.shuffle(examples)
out = Path(__file__).with_name("json-answers.jsonl")
out.write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in examples))
print(f"{len(examples)} examples -> {out}")
