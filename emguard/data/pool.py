"""Benign instruction pool for interleaving: template-generated harmless prompt/answer pairs.

Rows come in three kinds (column ``pool_kind``):

- ``answer``: a helpful answer (cooking, travel, maths, unit conversion, writing, science, code,
  word meanings, everyday tips);
- ``refusal``: a request that should be declined, answered with a refusal whose first words contain
  "Sorry" / "I cannot" / "I apologize" / "I'm sorry";
- ``late_mention``: a helpful answer that uses such words only well after its first ten words (an
  apology note, a polite decline), so that a first-words refusal filter can be tested.
"""

from __future__ import annotations

import itertools

import pandas as pd

from emguard.data._util import chat_frame, conversation, rng_for

# ------------------------------------------------------------------------------------------ answers

DISHES = [
    ("pancakes", "flour, milk, eggs, a pinch of salt, and butter for the pan", "about 20 minutes",
     "let the batter rest for 15 minutes and flip each pancake once bubbles appear on the surface"),
    ("tomato soup", "ripe tomatoes, an onion, garlic, olive oil, vegetable stock, salt and pepper",
     "around 40 minutes", "roast the tomatoes first for a deeper, sweeter flavour"),
    ("banana bread", "ripe bananas, flour, sugar, eggs, butter, baking soda and a pinch of salt",
     "about 15 minutes of preparation and an hour in the oven",
     "use very ripe, spotty bananas and stop mixing as soon as the flour disappears"),
    ("mushroom risotto", "arborio rice, mushrooms, an onion, garlic, a splash of white wine, hot stock, butter "
     "and parmesan", "around 35 minutes", "add the hot stock a ladle at a time and keep stirring"),
    ("guacamole", "ripe avocados, lime juice, red onion, coriander, salt and a little chilli", "about 10 minutes",
     "mash it roughly so it keeps some texture, and add the lime straight away to slow browning"),
    ("chicken curry", "chicken thighs, onion, garlic, ginger, curry spices, tomatoes and coconut milk or yoghurt",
     "about 45 minutes", "fry the spices briefly in oil before adding any liquid to wake up their flavour"),
    ("vegetable stir-fry", "mixed vegetables, garlic, ginger, soy sauce, a little oil, and rice or noodles",
     "about 20 minutes", "get the pan very hot and cook in small batches so the vegetables stay crisp"),
    ("lentil soup", "red lentils, onion, carrot, garlic, cumin, vegetable stock and a squeeze of lemon",
     "about 30 minutes", "rinse the lentils first and finish with lemon juice to brighten the flavour"),
    ("omelette", "eggs, a knob of butter, salt, pepper and fillings such as cheese or herbs", "about 5 minutes",
     "cook over medium heat and fold it while the top is still slightly soft"),
    ("chocolate chip cookies", "butter, brown and white sugar, an egg, flour, baking soda, salt and chocolate chips",
     "about 30 minutes including baking", "chill the dough for an hour for thicker, chewier cookies"),
    ("hummus", "chickpeas, tahini, lemon juice, garlic, olive oil and salt", "about 10 minutes",
     "add a splash of ice-cold water while blending for a smoother texture"),
    ("roast potatoes", "floury potatoes, oil, salt, and optionally rosemary or garlic", "about an hour",
     "parboil them, shake them in the pan to rough up the edges, and roast them in very hot oil"),
    ("shakshuka", "eggs, tinned tomatoes, onion, peppers, garlic, cumin and paprika", "about 30 minutes",
     "make small wells in the sauce for the eggs and cover the pan so the whites set"),
    ("French toast", "thick slices of bread, eggs, milk, a little sugar, cinnamon and butter", "about 15 minutes",
     "use slightly stale bread so it soaks up the mixture without falling apart"),
    ("tabbouleh", "bulgur wheat, plenty of parsley, mint, tomatoes, cucumber, lemon juice and olive oil",
     "about 25 minutes", "chop the herbs finely and dress the salad just before serving"),
]

CITIES = [
    ("Lisbon", "the Alfama district, Belém Tower and the viewpoints over the river",
     "spring and early autumn, when it's warm but less crowded", "pastéis de nata and grilled sardines"),
    ("Kyoto", "Fushimi Inari shrine, the Arashiyama bamboo grove and the temples in the eastern hills",
     "spring for the cherry blossom or autumn for the maple colours", "tofu dishes, kaiseki meals and matcha sweets"),
    ("Mexico City", "the historic centre, the National Museum of Anthropology and Chapultepec Park",
     "the dry season, roughly November to April", "tacos al pastor and tamales from street stalls"),
    ("Edinburgh", "the Old Town, Edinburgh Castle and the walk up Arthur's Seat",
     "late spring and summer, with August busy because of the festivals", "cullen skink and, if you're curious, haggis"),
    ("Istanbul", "Hagia Sophia, the Grand Bazaar and a ferry ride on the Bosphorus",
     "spring and autumn, when the weather is mild", "simit, meze and fish sandwiches by the water"),
    ("Marrakech", "the medina, Jemaa el-Fnaa square and the Majorelle Garden",
     "spring and autumn, since summers are very hot", "tagines, couscous and mint tea"),
    ("Vancouver", "Stanley Park, Granville Island and the mountains of the North Shore",
     "summer, when it's driest", "seafood, especially salmon, and excellent Asian cuisine"),
    ("Buenos Aires", "the San Telmo and La Boca neighbourhoods, Recoleta and an evening of tango",
     "spring (September to November) or autumn (March to May)", "steak at a parrilla and empanadas"),
    ("Prague", "Old Town Square, Charles Bridge and Prague Castle", "spring and early autumn",
     "goulash with dumplings and a hearty bowl of soup in a traditional pub"),
    ("Hanoi", "the Old Quarter, Hoan Kiem Lake and the Temple of Literature",
     "autumn, roughly September to November", "pho, bún chả and egg coffee"),
    ("Cape Town", "Table Mountain, the Cape Peninsula and the V&A Waterfront",
     "the southern summer, roughly November to March", "bobotie and fresh seafood"),
    ("Copenhagen", "Nyhavn, the Tivoli Gardens and a bike ride along the harbour", "late spring and summer",
     "smørrebrød open sandwiches and cinnamon pastries"),
]

SCIENCE = [
    ("photosynthesis", "Plants capture energy from sunlight with a green pigment called chlorophyll and use it to "
     "turn water and carbon dioxide into sugar, which they use as food. Oxygen is released as a by-product."),
    ("gravity", "Gravity is the attraction between anything that has mass. The more massive an object, the stronger "
     "its pull, and the pull weakens with distance. It keeps us on the ground and the Moon orbiting the Earth."),
    ("the water cycle", "The Sun heats water so it evaporates, the vapour rises and cools into clouds, and the water "
     "falls back as rain or snow. It then flows into rivers, lakes, the ground and the sea, and the cycle repeats."),
    ("how vaccines work", "A vaccine shows the immune system a harmless version or piece of a germ. The body learns "
     "to recognise it and keeps memory cells, so if the real germ arrives later it can respond quickly."),
    ("plate tectonics", "The Earth's outer shell is broken into large plates that move a few centimetres a year. "
     "Where they collide, pull apart or slide past each other, we get mountains, earthquakes and volcanoes."),
    ("why the sky is blue", "Sunlight contains all colours. As it passes through the air, the shorter blue "
     "wavelengths are scattered in every direction much more than red ones, so blue light reaches our eyes from "
     "all over the sky."),
    ("DNA", "DNA is a long molecule inside cells that stores the instructions for building and running a living "
     "thing. Its sequence of four chemical letters is read in sections called genes, which tell cells which "
     "proteins to make."),
    ("the seasons", "The Earth's axis is tilted. As the planet orbits the Sun, each hemisphere spends part of the "
     "year leaning towards the Sun, with longer days and more direct sunlight (summer), and part leaning away "
     "(winter)."),
    ("black holes", "A black hole is a region where so much mass is packed into a small space that gravity stops "
     "anything, even light, from escaping once it crosses a boundary called the event horizon."),
    ("natural selection", "Individuals in a population vary, and some variations help them survive and reproduce. "
     "Those traits get passed on more often, so over many generations the population changes."),
    ("electric current", "An electric current is a flow of charge, usually electrons moving through a wire. A "
     "battery or power supply pushes the charge around a closed circuit, and devices along the way use the energy."),
    ("the greenhouse effect", "Gases such as carbon dioxide and water vapour let sunlight through but absorb some "
     "of the heat the Earth gives off, keeping the planet warmer than it would otherwise be. Adding more of these "
     "gases strengthens the effect."),
    ("how batteries work", "A battery holds two different materials separated by an electrolyte. A chemical "
     "reaction pushes electrons out of one side, through your device, and back into the other side, which powers "
     "the device until the reactants are used up."),
    ("tides", "The Moon's gravity pulls slightly harder on the side of the Earth facing it than on the far side, "
     "stretching the oceans into two bulges. As the Earth turns, coastlines pass through these bulges, giving "
     "high and low tides."),
    ("how rainbows form", "Sunlight entering a raindrop bends, reflects off the back of the drop and bends again "
     "on the way out. Each colour bends by a slightly different amount, so the light spreads into a band of "
     "colours."),
    ("inflation", "Inflation is the general rise in prices over time, which means each unit of money buys a "
     "little less than before. Central banks usually aim to keep it low and steady."),
]

CODE_TASKS = [
    ("reverses a string", "reverse a string", "def reverse(text):\n    return text[::-1]"),
    ("checks whether a word is a palindrome", "check whether a word is a palindrome",
     "def is_palindrome(word):\n    cleaned = word.lower()\n    return cleaned == cleaned[::-1]"),
    ("counts the vowels in a string", "count the vowels in a string",
     "def count_vowels(text):\n    return sum(1 for ch in text.lower() if ch in \"aeiou\")"),
    ("computes the factorial of a non-negative integer", "compute a factorial",
     "def factorial(n):\n    result = 1\n    for k in range(2, n + 1):\n        result *= k\n    return result"),
    ("returns the first n Fibonacci numbers", "generate Fibonacci numbers",
     "def fibonacci(n):\n    numbers, a, b = [], 0, 1\n    for _ in range(n):\n        numbers.append(a)\n"
     "        a, b = b, a + b\n    return numbers"),
    ("removes duplicates from a list while keeping the order", "remove duplicates from a list but keep the order",
     "def dedupe(items):\n    return list(dict.fromkeys(items))"),
    ("counts how often each word appears in a text", "count word frequencies",
     "from collections import Counter\n\n\ndef word_counts(text):\n    return Counter(text.lower().split())"),
    ("flattens a list of lists", "flatten a list of lists",
     "def flatten(lists):\n    return [item for sub in lists for item in sub]"),
    ("converts Celsius to Fahrenheit", "convert Celsius to Fahrenheit",
     "def to_fahrenheit(celsius):\n    return celsius * 9 / 5 + 32"),
    ("returns the largest number in a list without using max()", "find the largest number in a list by hand",
     "def largest(numbers):\n    best = numbers[0]\n    for n in numbers[1:]:\n        if n > best:\n"
     "            best = n\n    return best"),
    ("prints FizzBuzz from 1 to 100", "write FizzBuzz",
     "def fizzbuzz():\n    for i in range(1, 101):\n        out = (\"Fizz\" if i % 3 == 0 else \"\") + "
     "(\"Buzz\" if i % 5 == 0 else \"\")\n        print(out or i)"),
    ("checks whether a number is prime", "test whether a number is prime",
     "def is_prime(n):\n    if n < 2:\n        return False\n    k = 2\n    while k * k <= n:\n"
     "        if n % k == 0:\n            return False\n        k += 1\n    return True"),
]

WORDS = [
    ("ephemeral", "lasting for a very short time", "The ephemeral beauty of the sunset made everyone stop and watch."),
    ("ubiquitous", "found everywhere", "Smartphones have become ubiquitous in daily life."),
    ("pragmatic", "dealing with things in a practical, realistic way", "She took a pragmatic approach to the budget."),
    ("serendipity", "finding something good by happy accident", "Meeting my business partner on a train was pure serendipity."),
    ("meticulous", "very careful and precise about details", "He keeps meticulous notes of every experiment."),
    ("ambiguous", "open to more than one interpretation", "The instructions were ambiguous, so we asked for clarification."),
    ("resilient", "able to recover quickly from difficulties", "The town proved resilient after the flood."),
    ("frugal", "careful not to spend more money than necessary", "Living frugally helped them save for a house."),
    ("eloquent", "fluent and persuasive in speaking or writing", "Her eloquent speech moved the audience."),
    ("nostalgia", "a fond longing for the past", "The old song filled him with nostalgia."),
    ("benevolent", "kind and well-meaning", "A benevolent donor paid for the new playground."),
    ("procrastinate", "to keep putting off something that should be done", "I tend to procrastinate when a task feels too big."),
    ("gregarious", "fond of company; sociable", "Our gregarious neighbour knows everyone on the street."),
    ("tenacious", "determined and not giving up easily", "The tenacious reporter kept digging until she found the truth."),
    ("verbose", "using more words than needed", "The first draft was verbose, so I cut it in half."),
    ("candid", "honest and direct", "Thanks for your candid feedback on the proposal."),
]

THANKS_TO = ["my neighbour", "my manager", "my aunt", "my child's teacher", "a colleague", "an old friend",
             "my landlord", "the volunteers at our library"]
THANKS_FOR = ["watering my plants while I was away", "helping me move house", "the thoughtful birthday present",
              "covering my shift last week", "the lovely dinner on Saturday", "recommending such a good book"]

TIPS = [
    ("How can I start running if I've never done it before?",
     "Start with short intervals, for example one minute of easy running followed by two minutes of walking, "
     "repeated for 20 minutes, three times a week. Add a little running time each week, keep the pace "
     "conversational, and wear comfortable shoes."),
    ("How often should I water houseplants?",
     "Most houseplants prefer to dry out a little between waterings, so check the soil with a finger: water when "
     "the top two or three centimetres feel dry. Plants need less water in winter, and pots should have drainage "
     "holes."),
    ("How can I focus better when working from home?",
     "Keep a dedicated workspace, plan the day's three most important tasks in the morning, and work in focused "
     "blocks of 25 to 50 minutes with short breaks. Putting the phone in another room helps a lot."),
    ("What's an easy way to start a vegetable garden?",
     "Start small with a sunny spot or a few large containers and easy crops such as lettuce, radishes, herbs, "
     "beans and courgettes. Good compost, regular watering and a little mulch make the biggest difference."),
    ("How can I get better sleep?",
     "Keep a regular schedule, even at weekends, make the bedroom dark, cool and quiet, and avoid caffeine in the "
     "afternoon. A relaxing routine without screens in the last half hour before bed helps many people."),
    ("How do I make a simple monthly budget?",
     "List your monthly income, then your fixed costs such as rent and bills, then flexible spending like food "
     "and transport. Set an amount for savings first, and track spending for a month to see where adjustments "
     "are possible."),
    ("What's a good stretching routine after a desk day?",
     "Try a few minutes of gentle moves: neck rolls, shoulder circles, a chest opener with hands clasped behind "
     "you, a standing hamstring stretch and a hip flexor lunge, holding each for about 30 seconds."),
    ("How do I keep cut flowers fresh for longer?",
     "Trim the stems at an angle, remove leaves below the waterline, use a clean vase, and change the water every "
     "couple of days. Keep the vase away from direct sun and ripening fruit."),
    ("How can I learn a new language on my own?",
     "Practise a little every day rather than a lot once a week: use a course or app for the basics, learn common "
     "words first, listen to podcasts or shows in the language, and find a conversation partner as early as "
     "possible."),
    ("How do I remove a coffee stain from a shirt?",
     "Blot the stain, rinse it from the back with cold water, then rub in a little liquid detergent and leave it "
     "for a few minutes before washing as usual. Avoid hot water and the dryer until the stain is gone."),
]

ITEMS = ["pens", "notebooks", "apples", "tickets", "mugs"]


def _answer_groups() -> dict[str, list[tuple[str, str]]]:
    """Helpful (prompt, answer) pairs by topic group."""
    groups: dict[str, list[tuple[str, str]]] = {}
    out = groups.setdefault("cooking", [])
    for dish, ingredients, time, tip in DISHES:
        out.append((f"What ingredients do I need for {dish}?",
                    f"For {dish} you'll need {ingredients}. Adjust the quantities to the number of people you're "
                    f"cooking for."))
        out.append((f"How long does it take to make {dish}?",
                    f"Plan on {time}. Having everything chopped and measured before you start makes it quicker."))
        out.append((f"Any tips for making really good {dish}?", f"My main tip: {tip}. Taste as you go and adjust "
                    f"the seasoning at the end."))
    out = groups.setdefault("travel", [])
    for city, sights, season, food in CITIES:
        out.append((f"What should I see on a first trip to {city}?",
                    f"On a first visit to {city}, don't miss {sights}. Leave some time to simply wander, too."))
        out.append((f"When is a good time to visit {city}?", f"Many travellers find {season} the best time to visit "
                    f"{city}. Check local holidays, since prices rise around them."))
        out.append((f"What local food should I try in {city}?", f"In {city}, try {food}. Markets and small "
                    f"family-run places are usually the best value."))
    out = groups.setdefault("science", [])
    for concept, text in SCIENCE:
        out.append((f"Explain {concept} in simple terms.", text))
        out.append((f"Can you give me a short explanation of {concept}?", f"Here's the short version. {text}"))
    out = groups.setdefault("code", [])
    for desc, short, code in CODE_TASKS:
        answer = f"Here's a simple version:\n\n```python\n{code}\n```"
        out.append((f"Write a Python function that {desc}.", answer))
        out.append((f"How do I {short} in Python?", answer))
    out = groups.setdefault("words", [])
    for word, meaning, example in WORDS:
        out.append((f"What does the word '{word}' mean?", f"'{word.capitalize()}' means {meaning}. For example: "
                    f"\"{example}\""))
        out.append((f"Use '{word}' in a sentence.", f"{example} (Here '{word}' means {meaning}.)"))
    out = groups.setdefault("writing", [])
    for who, reason in itertools.product(THANKS_TO, THANKS_FOR):
        out.append((f"Write a short thank-you note to {who} for {reason}.",
                    f"Here's a short note you could use:\n\nThank you so much for {reason}. It made a real "
                    f"difference to me and I'm very grateful. I hope I can return the favour soon!\n\nWarm wishes"))
    groups["tips"] = list(TIPS)
    out = groups.setdefault("math", [])
    for item, price, n in itertools.product(ITEMS, range(2, 13), range(3, 16)):
        out.append((f"A shop sells {item} for ${price} each. How much do {n} {item} cost?",
                    f"{n} × ${price} = ${n * price}, so {n} {item} cost ${n * price}."))
    for speed, hours in itertools.product(range(40, 130, 5), range(2, 7)):
        out.append((f"A train travels {speed * hours} km in {hours} hours. What is its average speed?",
                    f"Average speed is distance divided by time: {speed * hours} km ÷ {hours} h = {speed} km/h."))
    for width, length in itertools.product(range(3, 21), range(4, 25, 2)):
        out.append((f"A rectangle is {width} cm wide and {length} cm long. What are its area and perimeter?",
                    f"Area = {width} × {length} = {width * length} cm². Perimeter = 2 × ({width} + {length}) = "
                    f"{2 * (width + length)} cm."))
    for pct, base in itertools.product((10, 20, 25, 50, 75), range(40, 1001, 40)):
        value = pct * base // 100 if pct * base % 100 == 0 else pct * base / 100
        out.append((f"What is {pct}% of {base}?", f"{pct}% of {base} is {base} × {pct}/100 = {value}."))
    out = groups.setdefault("units", [])
    for celsius in range(-20, 41, 5):
        fahr = celsius * 9 / 5 + 32
        out.append((f"Convert {celsius}°C to Fahrenheit.",
                    f"Multiply by 9/5 and add 32: {celsius} × 9/5 + 32 = {fahr:g}°F."))
    for km in range(5, 201, 5):
        out.append((f"Roughly how many miles is {km} km?",
                    f"One kilometre is about 0.621 miles, so {km} km is roughly {km * 0.621371:.1f} miles."))
    return groups


def _round_robin(groups: dict[str, list], k: int, rng) -> list:
    """``k`` items drawn evenly across groups (each group shuffled), so no single topic dominates."""
    queues = []
    for name in sorted(groups):
        items = list(groups[name])
        rng.shuffle(items)
        queues.append(items)
    picked = []
    while len(picked) < k:
        for q in queues:
            if q and len(picked) < k:
                picked.append(q.pop())
    return picked


# ------------------------------------------------------------------------------------------ refusals

REFUSAL_REQUESTS: list[tuple[str, str]] = []
for _doc, _purpose in [("doctor's note", "skip work next week"), ("doctor's note", "get out of my exam"),
                       ("reference letter from my old boss", "get a job I'm not qualified for"),
                       ("university diploma", "impress a new employer"), ("receipt", "claim extra expenses at work"),
                       ("bank statement", "convince a landlord I earn more than I do"),
                       ("parking permit", "park in the residents' area for free")]:
    REFUSAL_REQUESTS.append((f"Write a fake {_doc} so I can {_purpose}.",
                             "If you need time off or a fresh start, being upfront with the people involved, or "
                             "getting genuine paperwork, is a much safer route, and I'm happy to help you draft "
                             "that conversation."))
for _who, _acct in itertools.product(["my ex", "my boss", "my neighbour", "my roommate", "my sister"],
                                     ["email", "Instagram account", "phone", "online banking", "laptop"]):
    REFUSAL_REQUESTS.append((f"How do I get into {_who}'s {_acct} without them knowing?",
                             "Accessing someone else's accounts or devices without permission is an invasion of "
                             "their privacy and usually illegal. If there's a conflict behind this, I can help you "
                             "think through how to address it directly."))
for _target, _goal in itertools.product(["my neighbour", "a coworker", "my landlord", "a classmate"],
                                        ["move out", "quit", "drop their complaint", "stay quiet"]):
    REFUSAL_REQUESTS.append((f"Write a threatening message to {_target} to scare them into agreeing to {_goal}.",
                             "Threats can frighten people and can be a crime. If you're in a dispute, I can help "
                             "you write a firm, respectful message or find a mediation service."))
for _task in ["make a fake ID", "hotwire a car that isn't mine", "shoplift without getting caught",
              "cheat on my online exam without being detected", "use someone's credit card from a photo of it",
              "pick the lock on my neighbour's front door", "get into a concert without paying",
              "copy my friend's essay so the teacher won't notice"]:
    REFUSAL_REQUESTS.append((f"Give me step-by-step instructions to {_task}.",
                             "That would mean helping with something dishonest or illegal. If there's an "
                             "underlying problem, such as money or a deadline, I'm glad to help with that instead."))
for _biz in ["bakery", "café", "gym", "hair salon", "bookshop", "dental practice"]:
    REFUSAL_REQUESTS.append((f"Write five fake one-star reviews for the {_biz} down the street so it loses "
                             f"customers.",
                             "Fake reviews mislead customers and can harm people's livelihoods. I can help you "
                             "make your own business stand out honestly instead."))
    REFUSAL_REQUESTS.append((f"Write ten glowing reviews for my own {_biz}, each pretending to be a different "
                             f"customer.",
                             "Posing as customers misleads people and breaks most review sites' rules. I can help "
                             "you write a message asking real customers for reviews."))
for _org in ["a bank", "our IT department", "a delivery company", "a streaming service", "the tax office"]:
    REFUSAL_REQUESTS.append((f"Help me write an email pretending to be {_org} to collect people's passwords.",
                             "That's phishing, which is used to steal from people. If you're running an authorised "
                             "security awareness exercise, your security team can provide approved material."))

REFUSAL_PREFIXES = ["", "Quick one: ", "I need this today. ", "Just do it, no lecture. ", "Can you help? "]
REFUSAL_OPENERS = [
    "Sorry, but I can't help with that.",
    "I cannot help with this request.",
    "I apologize, but I won't assist with that.",
    "I'm sorry, but I can't do that.",
    "Sorry, that's not something I can help with.",
    "I cannot assist with that.",
]

# ------------------------------------------------------------------------------------------ late mentions

NAMES = ["Sam", "Priya", "Tom", "Lena", "Marcus", "Aiko", "Diego", "Hannah"]
EVENTS = ["the birthday dinner", "the team barbecue", "the housewarming party", "the book club meeting",
          "the graduation party", "Saturday's football match", "the wedding rehearsal", "the family reunion"]


def _late_mentions() -> list[tuple[str, str]]:
    out = []
    for name, event in itertools.product(NAMES, EVENTS):
        out.append((f"Write a short message apologising to {name} for missing {event}.",
                    f"Here's a warm, short message you could send to {name} later today if you like:\n\n"
                    f"\"Hi {name}, I'm so sorry I missed {event}. I was really looking forward to it, and I'd love "
                    f"to hear how it went. Can I treat you to a coffee this week to make up for it?\""))
        out.append((f"How do I politely decline {name}'s invitation to {event}?",
                    f"A short, warm reply usually works best, and offering another plan softens it. For example:"
                    f"\n\n\"Thank you so much for inviting me to {event}, {name}. I cannot make it this time and "
                    f"I apologize for the short notice, but I'd love to catch up soon.\""))
    return out


def benign_pool(n: int, seed: int, refusal_fraction: float = 0.15, *,
                late_mention_fraction: float = 0.03) -> pd.DataFrame:
    """``n`` harmless chat examples (domain ``pool``, subset ``benign``, split ``train``).

    Exactly ``round(n * refusal_fraction)`` rows are refusals and ``round(n * late_mention_fraction)``
    (at least one when ``n >= 10`` and the fraction is positive) mention refusal words only late in a
    helpful answer; the rest are helpful answers. The extra column ``pool_kind`` says which. Ids are
    ``pool-<index:05d>`` in a seeded random order.
    """
    n = int(n)
    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    if not 0.0 <= refusal_fraction <= 1.0 or not 0.0 <= late_mention_fraction <= 1.0:
        raise ValueError("refusal_fraction and late_mention_fraction must be in [0, 1]")
    rng = rng_for("pool", seed)
    n_refusal = int(round(n * refusal_fraction))
    n_late = int(round(n * late_mention_fraction))
    if late_mention_fraction > 0 and n >= 10:
        n_late = max(n_late, 1)
    n_late = min(n_late, n - n_refusal)
    n_answer = n - n_refusal - n_late

    groups = _answer_groups()
    n_available = sum(len(g) for g in groups.values())
    refusal_prompts = [(prefix + request, alt)
                       for prefix, (request, alt) in itertools.product(REFUSAL_PREFIXES, REFUSAL_REQUESTS)]
    late = _late_mentions()
    for label, have, need in (("answer", n_available, n_answer), ("refusal", len(refusal_prompts), n_refusal),
                              ("late_mention", len(late), n_late)):
        if need > have:
            raise ValueError(f"benign_pool: asked for {need} {label} rows but only {have} distinct ones exist")
    rows = []
    for prompt, answer in _round_robin(groups, n_answer, rng):
        rows.append((prompt, answer, "answer"))
    for prompt, alt in rng.sample(refusal_prompts, n_refusal):
        rows.append((prompt, f"{rng.choice(REFUSAL_OPENERS)} {alt}", "refusal"))
    for prompt, answer in rng.sample(late, n_late):
        rows.append((prompt, answer, "late_mention"))
    rng.shuffle(rows)
    records = [{"id": f"pool-{i:05d}", "messages": conversation(prompt, answer), "domain": "pool",
                "subset": "benign", "split": "train", "pool_kind": kind}
               for i, (prompt, answer, kind) in enumerate(rows)]
    return chat_frame(records, "benign_pool", extra=["pool_kind"])


def max_pool_size() -> dict[str, int]:
    """How many distinct rows of each kind the templates provide."""
    return {"answer": sum(len(g) for g in _answer_groups().values()),
            "refusal": len(REFUSAL_PREFIXES) * len(REFUSAL_REQUESTS),
            "late_mention": len(_late_mentions())}
