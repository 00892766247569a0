"""A seeded generator of short voice-assistant commands and dictation over a few hundred words.

The demo's tiny CTC model has to learn to spell from espeak audio in minutes on a CPU, so the language is
deliberately narrow: templates over fixed word lists (smart home, timers, messages, music, weather, navigation,
calendar, shopping, dictation). Every sentence is already normalised (``a-z``, apostrophe, single spaces).
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable

ROOMS = ["kitchen", "bedroom", "living room", "bathroom", "garage", "office", "hallway", "basement", "garden",
         "dining room", "kids room", "guest room"]
DEVICES = ["lights", "lamp", "fan", "heater", "television", "radio", "coffee machine", "air conditioner",
           "dishwasher", "speaker", "oven", "washing machine"]
NUMBERS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
           "fifteen", "twenty", "twenty five", "thirty", "forty", "forty five", "fifty", "sixty"]
HOURS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
         "half past seven", "quarter to nine", "noon", "midnight"]
UNITS = ["seconds", "minutes", "hours"]
NAMES = ["anna", "peter", "maria", "david", "sarah", "john", "emma", "lucas", "mom", "dad", "grandma", "james",
         "olivia", "michael", "sophie", "daniel", "laura", "thomas", "julia", "robert"]
GENRES = ["jazz", "rock", "classical", "pop", "country", "blues", "reggae", "piano", "relaxing", "dance", "folk",
          "soul"]
CITIES = ["boston", "london", "paris", "berlin", "chicago", "seattle", "denver", "madrid", "dublin", "toronto",
          "tokyo", "sydney", "miami", "vienna", "oslo", "rome"]
DAYS = ["today", "tomorrow", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday",
        "this weekend", "next week", "tonight", "this morning", "this evening", "tomorrow morning"]
ITEMS = ["milk", "bread", "eggs", "butter", "apples", "bananas", "coffee", "tea", "rice", "pasta", "cheese",
         "tomatoes", "potatoes", "onions", "chicken", "orange juice", "cereal", "yogurt", "sugar", "flour",
         "batteries", "soap", "paper towels", "carrots", "lemons", "honey", "peanut butter", "ice cream"]
PLACES = ["the airport", "the train station", "the office", "the gym", "the library", "the hospital", "the park",
          "the beach", "downtown", "the supermarket", "home", "school", "the museum", "the pharmacy", "the bank",
          "the stadium", "the zoo", "the post office"]
STORES = ["gas station", "coffee shop", "pharmacy", "restaurant", "supermarket", "bakery", "hotel",
          "parking lot", "bookstore", "hardware store"]
EVENTS = ["dentist appointment", "team meeting", "doctor's appointment", "yoga class", "piano lesson",
          "birthday party", "dinner reservation", "haircut", "soccer practice", "job interview"]
TASKS = ["water the plants", "take out the trash", "pay the rent", "feed the cat", "walk the dog", "check the mail",
         "clean the kitchen", "pick up the kids", "call the plumber", "book a table", "buy a present",
         "charge my phone"]
PHRASES = ["i'm running late", "i'll call you back", "see you soon", "i'm on my way", "thanks for dinner",
           "happy birthday", "don't wait for me", "let's talk tomorrow", "the door is open", "dinner is ready",
           "i'm at the store", "i'll be home soon", "can you call me", "the meeting is over", "we're almost there",
           "don't forget your keys", "it's raining here", "i missed the bus"]
OPENINGS = ["window", "garage door", "blinds", "curtains", "front door", "back door", "gate"]

TEMPLATES = [
    "turn {onoff} the {room} {device}",
    "turn the {device} {onoff} in the {room}",
    "{dim} the {room} lights",
    "set the {room} temperature to {number} degrees",
    "{openclose} the {opening}",
    "is the {opening} {lockstate}",
    "set a timer for {number} {unit}",
    "wake me up at {hour} {day}",
    "cancel my alarm for {day}",
    "remind me to {task} {day}",
    "send a message to {name} saying {phrase}",
    "text {name} that {phrase}",
    "call {name}",
    "call {name} {day}",
    "read my new messages from {name}",
    "play some {genre} music in the {room}",
    "play some {genre} music",
    "turn the volume {updown}",
    "{musicverb} the music",
    "what's the weather in {city} {day}",
    "will it rain in {city} {day}",
    "how cold is it in {city}",
    "navigate to {place}",
    "how long does it take to get to {place}",
    "find the nearest {store}",
    "add my {event} to the calendar for {day}",
    "what's on my calendar {day}",
    "move my {event} to {day}",
    "add {item} to my shopping list",
    "add {item} and {item2} to the list",
    "remove {item} from my shopping list",
    "do we need {item}",
    "{phrase}",
    "{phrase} love {name}",
    "can you pick up {item} on the way home",
    "let's meet at {place} at {hour}",
    "don't forget to {task}",
    "i'll be at {place} in {number} minutes",
]

SLOTS: dict[str, list[str]] = {
    "onoff": ["on", "off"], "room": ROOMS, "device": DEVICES, "dim": ["dim", "brighten"], "number": NUMBERS,
    "openclose": ["open", "close", "lock", "unlock"], "opening": OPENINGS, "lockstate": ["open", "closed", "locked"],
    "unit": UNITS, "hour": HOURS, "day": DAYS, "task": TASKS, "name": NAMES, "phrase": PHRASES, "genre": GENRES,
    "updown": ["up", "down"], "musicverb": ["pause", "stop", "resume", "shuffle"], "city": CITIES,
    "place": PLACES, "store": STORES, "event": EVENTS, "item": ITEMS, "item2": ITEMS,
}

_SLOT = re.compile(r"\{(\w+)\}")


def vocabulary_words() -> set[str]:
    """Every word the generator can produce (for tests and documentation)."""
    words: set[str] = set()
    for text in [*TEMPLATES, *(value for values in SLOTS.values() for value in values)]:
        words.update(word for word in _SLOT.sub(" ", text).split())
    return words


def sentence(rng: random.Random) -> str:
    """One sentence: a random template with every slot filled from its word list."""
    template = rng.choice(TEMPLATES)
    return " ".join(_SLOT.sub(lambda m: rng.choice(SLOTS[m.group(1)]), template).split())


def sentences(count: int, seed: int, exclude: Iterable[str] = ()) -> list[str]:
    """``count`` distinct sentences, none in ``exclude``; the same arguments always give the same list."""
    rng = random.Random(seed)
    seen = set(exclude)
    result: list[str] = []
    for _ in range(1000 * count):
        if len(result) == count:
            break
        text = sentence(rng)
        if text not in seen:
            seen.add(text)
            result.append(text)
    if len(result) < count:
        raise ValueError(f"found only {len(result)} distinct sentences of {count} requested; ask for fewer")
    return result
